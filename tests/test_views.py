"""Pages as a person sees them: rows, fragments for htmx, errors in words, nothing leaked."""

from __future__ import annotations

import re

import pytest

from dashboard.htmx import HTMX_CDN_URL, HTMX_SRI
from tests.helpers import Auth, make_app, signed_in_client, write_environments

HEAD = "8d3907739fa1"
MERGE = "1aec4c5d1964"
BRANCH_POINT = "b3c7cfcc6bed"
HX = {"HX-Request": "true"}


def rows_of(html: str, marker: str) -> list[str]:
    return re.findall(rf'{marker}="([^"]+)"', html)


def test_overview_lists_environments_in_promotion_order_with_their_status(demo_client):
    response = demo_client.get("/")
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert rows_of(html, "data-env") == ["dev", "staging", "production"]
    assert rows_of(html, "data-status") == ["up_to_date", "behind", "behind"]
    assert "Up to date" in html and "2 behind" in html and "5 behind" in html
    assert f">{HEAD}</a>" in html and f">{MERGE}</a>" in html
    assert "protected" in html
    assert re.search(r"<time datetime=\"[^\"]+\"[^>]*>\d+ s ago</time>", html)
    assert "<html" in html and 'id="environments"' in html


def test_overview_for_htmx_is_just_the_table(demo_client):
    html = demo_client.get("/", headers=HX).get_data(as_text=True)
    assert html.lstrip().startswith('<section id="environments"')
    assert "<html" not in html
    assert rows_of(html, "data-env") == ["dev", "staging", "production"]


def test_refresh_rereads_the_databases(demo_client, demo_folder):
    client = demo_client
    assert 'data-status="up_to_date"' in client.get("/").get_data(as_text=True)
    (demo_folder / "demo" / "dev.db").unlink()

    cached = client.get("/").get_data(as_text=True)
    # Refresh is a POST (it asks the lease holder for a read); a GET only shows what is stored.
    assert rows_of(client.get("/?refresh=1", headers=HX).text, "data-status")[0] == "up_to_date"
    refreshed = Auth(client).post("/?refresh=1", headers=HX).get_data(as_text=True)

    assert rows_of(cached, "data-status")[0] == "up_to_date"
    assert rows_of(refreshed, "data-status")[0] == "unreachable"
    assert "dev.db does not exist" in refreshed


def test_environment_page_shows_current_pending_and_settings(demo_client):
    response = demo_client.get("/environments/production")
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert "5 behind" in html
    pending = re.search(r"Pending revisions.*?</ol>", html, re.S).group(0)
    assert re.findall(r'/revisions/([0-9a-f]+)"', pending) == [
        "4add470122e6",
        "8f60afaad46c",
        "7ca9ba531bc0",
        "a86d1732ddb4",
        HEAD,
    ]
    assert "merge sku and address branches" in html
    assert "2 approvals needed" in html and "not allowed" in html


def test_environment_fragment_for_htmx(demo_client):
    html = demo_client.get("/environments/dev", headers=HX).get_data(as_text=True)
    assert html.lstrip().startswith('<section id="environment"')
    assert "Nothing pending" in html


def test_unknown_environment_is_a_404_in_words(demo_client):
    response = demo_client.get("/environments/qa")
    assert response.status_code == 404
    assert "There is no environment called “qa”" in response.get_data(as_text=True)


def test_history_lists_every_revision_newest_first_with_marks_and_environments(demo_client):
    html = demo_client.get("/history").get_data(as_text=True)

    revisions = rows_of(html, "data-revision")
    assert len(revisions) == 13 and revisions[0] == HEAD
    assert revisions.index(MERGE) < revisions.index(BRANCH_POINT)
    head_row = html[html.index(f'data-revision="{HEAD}"') :].split("</tr>")[0]
    assert "head</span>" in head_row and re.findall(r'chip">(\w+)<', head_row) == ["dev"]
    merge_row = html[html.index(f'data-revision="{MERGE}"') :].split("</tr>")[0]
    assert "merge</span>" in merge_row
    assert re.findall(r'chip">(\w+)<', merge_row) == ["dev", "staging", "production"]
    assert "branch point</span>" in html
    # Per row, the lane lines (stretched with the row) and the node (kept round) are two SVGs.
    assert html.count("<svg") == 2 * 13 and html.count("<circle") == 13


def test_history_of_thousands_of_revisions_is_paginated(tmp_path, script_tree):
    script_tree.linear(250)
    app = make_app(
        tmp_path,
        ENVIRONMENTS_FILE=str(
            write_environments(
                tmp_path,
                f"""
                migrations: {script_tree.path}
                environments:
                  - name: dev
                    url: sqlite:///dev.db
                """,
            )
        ),
    )
    client = signed_in_client(app)

    first = client.get("/history").get_data(as_text=True)
    more = client.get("/history?page=3", headers=HX).get_data(as_text=True)

    assert len(rows_of(first, "data-revision")) == 100
    assert rows_of(first, "data-revision")[0] == "r249"
    assert 'hx-get="/history?page=2" hx-trigger="revealed"' in first
    assert "<html" not in more and rows_of(more, "data-revision")[-1] == "r00"
    assert len(rows_of(more, "data-revision")) == 50 and "hx-trigger" not in more
    assert client.get("/history?page=9").status_code == 404


def test_revision_page_shows_source_highlighted_and_relations(demo_client):
    response = demo_client.get(f"/revisions/{MERGE}")
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert "merge sku and address branches" in html
    assert "/revisions/5cb588266835" in html and "/revisions/d11b293a31f2" in html
    assert "/revisions/4add470122e6" in html  # the child
    assert "1aec4c5d1964_merge_sku_and_address_branches.py" in html
    assert 'class="source"' in html and '<span class="k">def</span>' in html
    assert "/assets/highlight.css" in html


def test_highlight_stylesheet_is_served(demo_client):
    response = demo_client.get("/assets/highlight.css")
    assert response.status_code == 200 and response.mimetype == "text/css"
    assert ".source .k" in response.get_data(as_text=True)


def test_unknown_revision_is_a_404_in_words(demo_client):
    response = demo_client.get("/revisions/deadbeef0000")
    assert response.status_code == 404
    assert "No revision “deadbeef0000”" in response.get_data(as_text=True)


def test_unknown_page_for_htmx_gets_a_fragment(demo_client):
    response = demo_client.get("/nowhere", headers=HX)
    html = response.get_data(as_text=True)
    assert response.status_code == 404
    assert "<html" not in html and 'role="alert"' in html


def test_an_unreachable_environment_shows_its_error_while_others_render(
    demo_folder, closed_port, demo_passwords
):
    text = (demo_folder / "environments.yaml").read_text()
    text += (
        "  - name: analytics\n"
        f"    url: postgresql+psycopg://report:hunter2-secret@127.0.0.1:{closed_port}/shop\n"
        "  - name: qa\n"
        "    url: ${QA_DATABASE_URL}\n"
    )
    (demo_folder / "environments.yaml").write_text(text)
    client = make_app(demo_folder).test_client()
    Auth(client).login("viewer", demo_passwords["viewer"])

    pages = [
        client.get(path).get_data(as_text=True)
        for path in ("/", "/environments/analytics", "/environments/qa", "/history")
    ]

    overview = pages[0]
    assert rows_of(overview, "data-status") == [
        "up_to_date",
        "behind",
        "behind",
        "unreachable",
        "not_configured",
    ]
    assert "Connection refused" in overview or "connection" in overview.lower()
    assert "QA_DATABASE_URL" in overview
    assert "Last status error" in pages[1]
    assert "report:***@127.0.0.1" in pages[1]
    for html in pages:
        assert "hunter2-secret" not in html


def test_a_script_message_with_markup_is_escaped(tmp_path, script_tree):
    script_tree.add("x1", None, "drop <script>alert('owned')</script> table")
    folder = tmp_path / "site"
    folder.mkdir()
    write_environments(
        folder,
        f"""
        migrations: {script_tree.path}
        environments:
          - name: dev
            url: sqlite:///dev.db
        """,
    )
    client = signed_in_client(make_app(folder))

    for path in ("/history", "/revisions/x1"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert" in html


def test_pages_load_the_pinned_htmx_with_its_integrity_hash(demo_client):
    html = demo_client.get("/").get_data(as_text=True)
    assert f'src="{HTMX_CDN_URL}"' in html
    assert f'integrity="{HTMX_SRI}" crossorigin="anonymous"' in html
    assert '"includeIndicatorStyles": false' in html


def test_a_configured_htmx_url_is_used_without_the_cdn_hash(demo_folder, demo_passwords):
    client = make_app(demo_folder, HTMX_URL="/static/vendor/htmx.min.js").test_client()
    Auth(client).login("viewer", demo_passwords["viewer"])
    html = client.get("/").get_data(as_text=True)
    assert 'src="/static/vendor/htmx.min.js"' in html and "integrity=" not in html


def test_healthz_answers_without_touching_target_databases(demo_folder, closed_port):
    for database in (demo_folder / "demo").iterdir():
        database.unlink()
    client = make_app(demo_folder).test_client()

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"
    assert not any((demo_folder / "demo").iterdir())


def test_readyz_reports_an_unreachable_store(demo_folder, closed_port):
    client = make_app(
        demo_folder,
        SQLALCHEMY_DATABASE_URI=f"postgresql+psycopg://dash:hunter2-secret@127.0.0.1:{closed_port}/x",
    ).test_client()

    response = client.get("/readyz")  # /healthz says only that the process serves

    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    assert "hunter2-secret" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/", "/history", f"/revisions/{HEAD}", "/environments/dev"])
def test_every_page_renders_without_javascript_links(demo_client, path):
    html = demo_client.get(path).get_data(as_text=True)
    # Every htmx action has a plain href/form fallback.
    assert html.count("hx-get=") <= html.count("href=") + html.count("action=")
