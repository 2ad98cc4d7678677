"""Locust, headless, as a library: N users sign in, then browse for S seconds; writes JSON.

Run by bench/scale.py in a process of its own (locust patches the standard library with gevent,
which the rest of the benchmark must not get). The password comes in BENCH_LOAD_PASSWORD.

    python bench/scale_load.py --host http://127.0.0.1:PORT --username U --users 50 \
        --seconds 60 --json out.json (--overview | --job-page PATH --job-poll PATH)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import gevent
from locust import HttpUser, between, events, task
from locust.env import Environment
from requests.adapters import HTTPAdapter

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SIGN_IN_TIMEOUT = 600.0


class Settings:
    username = ""
    password = ""
    job_page = ""
    job_poll = ""
    signed_in = 0
    sign_in_failures: list[str] = []


class SourceAddress(HTTPAdapter):
    """Connect from a loopback address of one's own (127.0.0.2, .3, …): 50 people are 50
    addresses, not one that the sign-in throttle sees trying 50 times."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


class SignedInUser(HttpUser):
    """A person who signs in once, before the measured window, then reads pages."""

    abstract = True
    wait_time = between(1, 3)
    started = 0

    def on_start(self) -> None:
        SignedInUser.started += 1
        number = SignedInUser.started
        address = f"127.0.{number // 250}.{number % 250 + 1}"
        self.client.mount("http://", SourceAddress(address))
        page = self.client.get("/login", name="sign-in")
        match = CSRF.search(page.text)
        answer = self.client.post(
            "/login",
            data={
                "username": Settings.username,
                "password": Settings.password,
                "csrf_token": match.group(1) if match else "",
            },
            allow_redirects=False,
            name="sign-in",
        )
        if answer.status_code == 302:
            Settings.signed_in += 1
        else:
            error = f": {answer.error}" if answer.error else ""
            Settings.sign_in_failures.append(f"answered {answer.status_code}{error}"[:200])


class OverviewUser(SignedInUser):
    @task
    def overview(self) -> None:
        self.client.get("/", name="overview")


class JobPageUser(SignedInUser):
    """Opens the job page now and then; polls it as its live part does in between."""

    @task(1)
    def page(self) -> None:
        self.client.get(Settings.job_page, name="job page")

    @task(4)
    def poll(self) -> None:
        self.client.get(Settings.job_poll, name="job poll", headers={"HX-Request": "true"})


def entry_figures(entry) -> dict:
    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "p50_ms": entry.get_response_time_percentile(0.5),
        "p95_ms": entry.get_response_time_percentile(0.95),
        "max_ms": entry.max_response_time,
        "avg_bytes": round(entry.avg_content_length),
        "requests_per_s": round(entry.total_rps, 2),
    }


def run(args: argparse.Namespace) -> dict:
    user = JobPageUser if args.job_page else OverviewUser
    environment = Environment(user_classes=[user], host=args.host, events=events)
    runner = environment.create_local_runner()
    started = time.monotonic()
    runner.start(args.users, spawn_rate=args.users)
    while Settings.signed_in + len(Settings.sign_in_failures) < args.users:
        if time.monotonic() - started > SIGN_IN_TIMEOUT:
            break
        gevent.sleep(0.1)
    sign_in_s = time.monotonic() - started
    # The measured window starts once every user has signed in.
    environment.stats.reset_all()
    window_start = time.time()
    gevent.sleep(args.seconds)
    stats = environment.stats
    figures = {
        "window": [window_start, time.time()],
        "users": args.users,
        "signed_in": Settings.signed_in,
        "sign_in_failures": Settings.sign_in_failures,
        "sign_in_s": round(sign_in_s, 1),
        "seconds": args.seconds,
        "total": entry_figures(stats.total),
        "by_name": {name: entry_figures(entry) for (name, _), entry in stats.entries.items()},
        "errors": [
            {"name": error.name, "error": str(error.error)[:300], "count": error.occurrences}
            for error in stats.errors.values()
        ][:10],
    }
    runner.quit()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--job-page", default="")
    parser.add_argument("--job-poll", default="")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    Settings.username = args.username
    Settings.password = os.environ["BENCH_LOAD_PASSWORD"]
    Settings.job_page, Settings.job_poll = args.job_page, args.job_poll
    args.json.write_text(json.dumps(run(args), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
