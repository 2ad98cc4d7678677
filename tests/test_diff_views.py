"""The Diff and Drift pages on the demo: warnings, schema diff, SQL file, drift and comparisons."""

from __future__ import annotations

import re

import pytest

from tests.helpers import Auth, execute
from tests.test_tasks import start_and_wait, wait_for_drift_checks
from tests.test_views import rows_of

DROP_USERNAME = "7ca9ba531bc0"
BACKFILL = "8f60afaad46c"
ADD_DISPLAY_NAME = "4add470122e6"


def demo_url(demo_folder, name: str) -> str:
    return f"sqlite:///{demo_folder / 'demo' / f'{name}.db'}"


def test_production_diff_shows_steps_warnings_and_offline_flags(demo_client):
    response = demo_client.get("/environments/production/diff")
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert rows_of(html, "data-revision") == [
        ADD_DISPLAY_NAME,
        BACKFILL,
        DROP_USERNAME,
        "a86d1732ddb4",
        "8d3907739fa1",
    ]
    warnings = re.findall(r'class="flash bad warning">([^<]+)<', html)
    assert any("drops column customer.legacy_username" in warning for warning in warnings)
    # The data migration queries through op.get_bind(): flagged, not rendered.
    assert "Cannot be rendered offline" in html
    assert "ALTER TABLE customer ADD COLUMN display_name" in re.sub(r"<[^>]+>", "", html)
    assert "def upgrade" in re.sub(r"<[^>]+>", "", html)  # the script source, highlighted
    assert 'href="/environments/production/diff.sql?' in html


def test_schema_diff_of_the_production_upgrade_lists_exactly_the_changes(clients):
    # A schema diff builds scratch databases: an operator's work (issue 13), started by a POST
    # and run as a task (issue 14).
    html = start_and_wait(clients["operator"], "/environments/production/diff/schema")

    assert "<html" not in html
    changes = set(
        re.findall(
            r'class="change (\w+)" data-kind="(\w+)" data-table="(\w+)" data-name="([^"]*)"', html
        )
    )
    assert changes == {
        ("added", "column", "customer", "display_name"),
        ("dropped", "column", "customer", "legacy_username"),
        ("added", "column", "orders", "status"),
        ("added", "index", "customer", "ix_customer_email"),
    } or changes == {
        ("added", "column", "customer", "display_name"),
        ("dropped", "column", "customer", "legacy_username"),
        ("added", "column", "orders", "status"),
        ("added", "unique", "customer", "email"),
    }


def test_the_sql_file_downloads_every_step(demo_client):
    response = demo_client.get("/environments/production/diff.sql")
    text = response.get_data(as_text=True)

    assert response.status_code == 200
    assert response.mimetype == "application/sql"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    assert "-- plan fingerprint " in text
    assert text.count("-- upgrade ") == 5
    assert "ALTER TABLE customer ADD COLUMN display_name" in text
    assert f"-- upgrade {BACKFILL}" in text and "cannot render offline" in text
    assert "-- warning: " in text and "legacy_username" in text


def test_a_diff_between_two_revisions_on_the_environments_dialect(demo_client, clients):
    html = demo_client.get(
        f"/environments/dev/diff?from={ADD_DISPLAY_NAME}&to={DROP_USERNAME}"
    ).get_data(as_text=True)
    assert rows_of(html, "data-revision") == [BACKFILL, DROP_USERNAME]
    assert f"Diff {ADD_DISPLAY_NAME} → {DROP_USERNAME}" in html

    schema = start_and_wait(
        clients["operator"],
        f"/environments/dev/diff/schema?from={ADD_DISPLAY_NAME}&to={DROP_USERNAME}",
    )
    assert re.findall(r'class="change (\w+)" data-kind="(\w+)"', schema) == [("dropped", "column")]

    down = demo_client.get(
        f"/environments/dev/diff?from={DROP_USERNAME}&to={ADD_DISPLAY_NAME}"
    ).get_data(as_text=True)
    assert rows_of(down, "data-revision") == [DROP_USERNAME, BACKFILL]


def test_a_diff_with_an_unknown_revision_says_which(demo_client):
    response = demo_client.get("/environments/dev/diff?from=base&to=nosuchrev")
    assert response.status_code == 200
    assert "nosuchrev" in response.get_data(as_text=True)
    assert 'role="alert"' in response.get_data(as_text=True)
    assert demo_client.get("/environments/nowhere/diff").status_code == 404


def test_the_sql_file_of_a_bad_target_is_a_400_in_words(demo_client):
    response = demo_client.get("/environments/dev/diff.sql?target=nosuchrev")
    assert response.status_code == 400
    assert "nosuchrev" in response.get_data(as_text=True)


def test_drift_is_not_checked_until_asked_then_none(demo_app, clients):
    viewer = clients["viewer"]
    overview = viewer.get("/").get_data(as_text=True)
    assert overview.count("drift not checked") == 3

    html = start_and_wait(clients["operator"], "/drift/check", {"environment": "staging"})
    assert re.findall(r'data-env="staging" data-drift="(\w+)"', html) == ["none"]
    assert "no drift" in viewer.get("/").get_data(as_text=True)


@pytest.mark.stores
def test_a_hand_made_column_and_index_show_as_drift(demo_app, demo_folder, clients):
    execute(
        demo_url(demo_folder, "staging"),
        "ALTER TABLE customer ADD COLUMN nickname VARCHAR(40)",
        "CREATE INDEX ix_customer_nickname ON customer (nickname)",
    )
    viewer = clients["viewer"]
    html = start_and_wait(clients["operator"], "/drift/check")

    assert re.findall(r'data-env="(\w+)" data-drift="(\w+)"', html) == [
        ("dev", "none"),
        ("staging", "drift"),
        ("production", "none"),
    ]
    detail = re.search(r'class="drift-detail" data-env="staging".*?</tr>\s*</tbody>', html, re.S)
    found = set(
        re.findall(
            r'class="change (\w+)" data-kind="(\w+)" data-table="(\w+)" '
            r'data-name="([^"]*)"',
            detail.group(0),
        )
    )
    assert found == {
        ("added", "column", "customer", "nickname"),
        ("added", "index", "customer", "ix_customer_nickname"),
    }
    assert "drift: 2 differences" in viewer.get("/").get_data(as_text=True)


def test_drift_check_without_javascript_redirects_back(clients):
    response = Auth(clients["operator"]).post("/drift/check", {"environment": "dev"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/drift")
    assert 'data-env="dev" data-drift="none"' in wait_for_drift_checks(clients["viewer"])


def test_drift_check_needs_a_csrf_token(clients):
    response = clients["operator"].post("/drift/check", data={"environment": "dev"})
    assert response.status_code == 400
    assert 'data-drift="not_checked"' in clients["viewer"].get("/drift").get_data(as_text=True)


def test_compare_staging_with_production_lists_what_differs(clients):
    operator = clients["operator"]
    html = operator.get("/drift/compare?a=staging&b=production").get_data(as_text=True)
    changes = set(re.findall(r'class="change (\w+)" data-kind="(\w+)" data-table="(\w+)"', html))
    # production is three revisions further behind than staging.
    assert ("added", "column", "customer") in changes  # legacy_username still in production
    assert ("dropped", "column", "customer") in changes  # display_name only in staging
    same = operator.get("/drift/compare?a=dev&b=dev").get_data(as_text=True)
    assert "Pick two different environments" in same


def test_a_diff_from_a_short_id_to_an_empty_target_goes_to_head(demo_client):
    html = demo_client.get(f"/environments/dev/diff?from={ADD_DISPLAY_NAME[:7]}&to=").get_data(
        as_text=True
    )
    assert rows_of(html, "data-revision") == [
        BACKFILL,
        DROP_USERNAME,
        "a86d1732ddb4",
        "8d3907739fa1",
    ]
