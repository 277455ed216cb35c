"""A job's own request headers (issue 20): parsing, every refusal, storage, choosing per host,
the engine's per-job cache, and that they go with the job (delete, retention).

Real parts: SQLite files through the jobs service and retention; no mocks.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select, update

from downloader import jobs
from downloader.db import Database
from downloader.inputs import ParsedInput, parse_text
from downloader.job_headers import JobHeaderCache, load_job_headers
from downloader.jobs.headers import MASK, shown
from downloader.models import JOB
from downloader.request_headers import (
    ANY_FORMAT_ACCEPT,
    MAX_HEADERS,
    MAX_LINES,
    MAX_TEXT_CHARS,
    HeaderError,
    RequestHeaders,
    from_json,
    headers_for,
    headers_for_url,
    parse_header,
    parse_header_text,
    parse_host,
    parse_options,
    to_json,
)
from downloader.retention import cleanup
from downloader.storage import LocalStorage
from tests.support.pg import pg_db

SECRET = "sessionid=S3CR3T-c00kie-value"

__all__ = ["pg_db"]  # fixture used below


# ---------------------------------------------------------------- parsing


def test_a_header_line_is_a_name_and_a_trimmed_value() -> None:
    assert parse_header("Referer: https://shop.example/") == ("Referer", "https://shop.example/")
    assert parse_header("  user-agent :\tMozilla/5.0 (X11)  ") == (
        "user-agent",
        "Mozilla/5.0 (X11)",
    )
    assert parse_header("Authorization: Bearer a:b:c") == ("Authorization", "Bearer a:b:c")
    for ordinary in (
        "Cookie",
        "Accept",
        "Accept-Language",
        "Origin",
        "X-Api-Key",
        "Sec-Fetch-Mode",
    ):
        assert parse_header(f"{ordinary}: x")[0] == ordinary


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("Referer = shop.example", "no ':' found"),
        (": value", "no name before ':'"),
        ("Bad Name: x", "'Bad Name' is not a header name"),
        ("Bad(Name): x", "'Bad(Name)' is not a header name"),
        ("Naïve: x", "'Naïve' is not a header name"),
        ("Referer:", "Referer has no value"),
        ("Referer:   ", "Referer has no value"),
        ("X-A: a\r\nX-Injected: 1", "the value of X-A holds a line break or NUL character"),
        ("X-A: a\nb", "the value of X-A holds a line break or NUL character"),
        ("X-A: a\rb", "the value of X-A holds a line break or NUL character"),
        ("X-A: a\0b", "the value of X-A holds a line break or NUL character"),
        ("X-A: a\x07b", "the value of X-A holds a control character"),
        ("X-A: a\x7fb", "the value of X-A holds a control character"),
        ("X-A: caf\u00e9", "the value of X-A is not ASCII"),
        ("Host: evil.example", "Host cannot be given: it is set by the HTTP client"),
        ("host: evil.example", "host cannot be given"),
        ("Content-Length: 5", "Content-Length cannot be given: it frames the request"),
        ("Transfer-Encoding: chunked", "Transfer-Encoding cannot be given: it frames the request"),
        ("Connection: close", "Connection cannot be given: it is a hop-by-hop header"),
        ("Keep-Alive: 5", "Keep-Alive cannot be given"),
        ("Upgrade: h2c", "Upgrade cannot be given: it is a hop-by-hop header"),
        ("TE: trailers", "TE cannot be given: it is a hop-by-hop header"),
        ("Trailer: X", "Trailer cannot be given"),
        ("Expect: 100-continue", "Expect cannot be given"),
        (
            "Proxy-Authorization: Basic eA==",
            "Proxy-Authorization cannot be given: it is for a proxy",
        ),
        ("Proxy-Connection: keep-alive", "Proxy-Connection cannot be given: it is for a proxy"),
        ("Accept-Encoding: sdch", "Accept-Encoding cannot be given"),
        ("Range: bytes=0-10", "Range cannot be given: it would fetch part of an image"),
        ("If-Range: x", "If-Range cannot be given"),
    ],
)
def test_every_refused_header_gets_its_own_message(line: str, problem: str) -> None:
    with pytest.raises(HeaderError) as caught:
        parse_header(line)
    assert problem in str(caught.value)


def test_messages_never_quote_a_value() -> None:
    """A value may be a cookie or a token: no message repeats it, whatever was wrong."""
    bad_lines = [
        f"Cookie: {SECRET}\0",
        f"Cookie: {SECRET}\x01",
        f"Cookie: {SECRET}é",
        f"Host: {SECRET}",
        f"Proxy-Authorization: {SECRET}",
    ]
    for line in bad_lines:
        with pytest.raises(HeaderError) as caught:
            parse_header_text(line)
        assert SECRET not in str(caught.value), line
    with pytest.raises(HeaderError) as caught:
        parse_header_text(f"Cookie: {SECRET}\nCookie: {SECRET}")
    assert SECRET not in str(caught.value)
    with pytest.raises(HeaderError) as caught:
        parse_options([f"Host: {SECRET}"])
    assert SECRET not in str(caught.value)
    assert "--header 'Host: …'" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("shop.example", "shop.example"),
        ("Shop.Example.", "shop.example"),
        ("SHOP.example:8443", "shop.example:8443"),
        ("127.0.0.3:8080", "127.0.0.3:8080"),
        ("2130706435:8080", "127.0.0.3:8080"),  # an IPv4 spelling, canonical as host_key does
        ("[::1]:8080", "[::1]:8080"),
        ("[0:0::1]", "[::1]"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("*.shop.example", "*.shop.example"),
        ("*.Shop.Example.:443", "*.shop.example:443"),
    ],
)
def test_hosts_are_normalised_like_host_keys(text: str, pattern: str) -> None:
    assert parse_host(text) == pattern


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no host given"),
        ("shop.example/path", "is not a host"),
        ("https://shop.example", "is not a host"),
        ("user@shop.example", "is not a host"),
        ("shop.example:99999", "is not a host"),
        ("shop.example:http", "is not a host"),
        ("sh op.example", "is not a host"),
        ("shop*.example", "only a leading '*.' is supported"),
        ("*", "only a leading '*.' is supported"),
        ("*.127.0.0.1", "is not a host"),
        ("a" * 300 + ".example", "is not a host"),
    ],
)
def test_bad_hosts_are_refused(text: str, problem: str) -> None:
    with pytest.raises(HeaderError) as caught:
        parse_host(text)
    assert problem in str(caught.value)


def test_the_box_syntax_with_hosts_comments_and_line_numbers() -> None:
    text = (
        "# hotlink protection\n"
        "Referer: https://shop.example/\n"
        "\n"
        "Shop.Example. | Cookie: a=b\n"
        "127.0.0.3:8080|Authorization: Bearer t\n"
        "*.cdn.example | User-Agent: Mozilla/5.0\n"
        "Referer: https://x.example/?a|b\n"  # a '|' inside a value: still job-wide
    )
    with pytest.raises(HeaderError) as caught:
        parse_header_text(text)
    assert caught.value.problems == [
        "line 7: Referer is given twice; give it once (join cookies with '; ')"
    ]
    headers = parse_header_text(text.rsplit("Referer", 1)[0])
    assert headers.common == (("Referer", "https://shop.example/"),)
    assert headers.hosts == (
        ("shop.example", (("Cookie", "a=b"),)),
        ("127.0.0.3:8080", (("Authorization", "Bearer t"),)),
        ("*.cdn.example", (("User-Agent", "Mozilla/5.0"),)),
    )
    assert not headers.any_format
    with pytest.raises(HeaderError, match=r"line 1: 'shop\.example/x' is not a host"):
        parse_header_text("shop.example/x | Cookie: a=b")
    assert parse_header_text("X-A: https://x.example/?a|b").common == (
        ("X-A", "https://x.example/?a|b"),
    )


def test_every_bad_line_is_reported_with_its_number() -> None:
    text = "Referer: https://shop.example/\nHost: x\nok\nshop.example | Connection: close\nA: \x01"
    with pytest.raises(HeaderError) as caught:
        parse_header_text(text)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "line 2",
        "line 3",
        "line 4",
        "line 5",
    ]


def test_a_name_twice_for_one_host_is_refused_a_host_may_repeat_a_job_wide_one() -> None:
    with pytest.raises(HeaderError, match=r"line 2: cookie is given twice for shop\.example"):
        parse_header_text("shop.example | Cookie: a=1\nSHOP.EXAMPLE. | cookie: b=2")
    headers = parse_header_text("Cookie: a=1\nshop.example | Cookie: b=2")
    assert headers.count == 2


def test_limits_on_count_size_text_and_lines() -> None:
    many = "\n".join(f"X-H{i}: v" for i in range(MAX_HEADERS))
    assert parse_header_text(many).count == MAX_HEADERS
    with pytest.raises(
        HeaderError, match=f"51 headers given; a job can have at most {MAX_HEADERS}"
    ):
        parse_header_text(many + "\nshop.example | X-Last: v")
    with pytest.raises(HeaderError, match="bytes; a job's headers can take at most 8,192"):
        parse_header_text("\n".join(f"X-Big{i}: {'v' * 3000}" for i in range(3)))
    with pytest.raises(HeaderError, match="longer than 65,536 characters"):
        parse_header_text("X: " + "v" * MAX_TEXT_CHARS)
    with pytest.raises(HeaderError, match=f"lines; at most {MAX_LINES}"):
        parse_header_text("\n" * (MAX_LINES + 1))
    with pytest.raises(HeaderError, match="51 headers given"):
        parse_options([f"X-H{i}: v" for i in range(MAX_HEADERS + 1)])


def test_command_line_options_name_the_bad_option() -> None:
    with pytest.raises(HeaderError, match=r"^--header 'Host: …': Host cannot be given"):
        parse_options(["Referer: https://a.example/", "Host: x"])
    with pytest.raises(HeaderError, match=r"^--header-for 'a/b': 'a/b' is not a host"):
        parse_options([], [("a/b", "Cookie: x")])
    with pytest.raises(HeaderError, match=r"^--header-for 'a.example' 'X-A: …': the value of X-A"):
        parse_options([], [("a.example", "X-A: \x00")])
    with pytest.raises(HeaderError, match=r"--header-for: Cookie is given twice for a\.example"):
        parse_options([], [("a.example", "Cookie: x"), ("A.example.", "Cookie: y")])
    with pytest.raises(HeaderError, match=r"^--headers-file h.txt: line 2: Host cannot"):
        parse_options(text="Referer: https://a.example/\nHost: x", text_name="--headers-file h.txt")
    both = parse_options(
        ["Referer: https://a.example/"],
        [("a.example", "Cookie: x")],
        any_format=True,
        text="b.example | Cookie: y",
    )
    assert both.common == (("Referer", "https://a.example/"),)
    assert both.hosts == (("b.example", (("Cookie", "y"),)), ("a.example", (("Cookie", "x"),)))
    assert both.any_format


# ---------------------------------------------------------------- storage and choosing


def test_json_round_trip_and_nothing_stored_for_nothing() -> None:
    headers = parse_header_text("Referer: r\nshop.example:8443 | Cookie: c", any_format=True)
    text = to_json(headers)
    assert text is not None and from_json(text) == headers
    assert to_json(RequestHeaders()) is None
    assert to_json(parse_header_text("# nothing")) is None
    assert from_json(None) == RequestHeaders() and from_json("") == RequestHeaders()
    only_format = parse_header_text("", any_format=True)
    assert from_json(to_json(only_format)) == only_format


@pytest.mark.parametrize(
    "stored",
    [
        '{"headers": [["X-A", "a\\r\\nX-Injected: 1"]]}',
        '{"headers": [["Host", "x"]]}',
        '{"hosts": [["a/b", [["Cookie", "x"]]]]}',
        "not json",
        '{"headers": 5}',
        "[1, 2]",
    ],
)
def test_a_stored_row_is_validated_again_when_read(stored: str) -> None:
    with pytest.raises(HeaderError):
        from_json(stored)


def test_headers_for_picks_job_wide_then_patterns_then_the_host_itself() -> None:
    headers = parse_header_text(
        "Referer: https://shop.example/\n"
        "User-Agent: job-wide\n"
        "*.example | User-Agent: any-example\n"
        "*.shop.example | User-Agent: any-shop\n"
        "img.shop.example | User-Agent: img\n"
        "img.shop.example:8443 | Cookie: port-only\n"
        "Shop.Example | Cookie: shop\n",
        any_format=True,
    )
    accept = ("Accept", ANY_FORMAT_ACCEPT)
    assert headers_for("other.test", headers, 443) == dict(
        [accept, ("Referer", "https://shop.example/"), ("User-Agent", "job-wide")]
    )
    assert headers_for("cdn.example", headers, 443)["User-Agent"] == "any-example"
    assert headers_for("a.b.shop.example", headers, 443)["User-Agent"] == "any-shop"
    assert headers_for("IMG.shop.example.", headers, 443)["User-Agent"] == "img"
    assert "Cookie" not in headers_for("img.shop.example", headers, 443)
    assert headers_for("img.shop.example", headers, 8443)["Cookie"] == "port-only"
    # "*.shop.example" is its subdomains only; the bare name has its own line
    assert headers_for("shop.example", headers, 80)["User-Agent"] == "any-example"
    assert headers_for("shop.example.", headers, 80)["Cookie"] == "shop"
    assert headers_for_url("https://IMG.Shop.Example:8443/a.jpg", headers)["Cookie"] == "port-only"
    assert headers_for_url("https://img.shop.example/a.jpg", headers).get("Cookie") is None
    assert headers_for_url("http://[::1]:80/a.jpg", parse_header_text("[::1] | X: 1")) == {"X": "1"}
    assert headers_for_url("http://0x7f.0.0.3:81/", parse_header_text("127.0.0.3:81 | X: 1")) == {
        "X": "1"
    }
    assert headers_for_url("https://a.example/", RequestHeaders()) == {}


def test_an_explicit_accept_wins_over_any_format() -> None:
    headers = parse_header_text("Accept: image/jpeg", any_format=True)
    assert headers_for("a.example", headers) == {"Accept": "image/jpeg"}
    assert headers_for("a.example", parse_header_text("", any_format=True)) == {
        "Accept": ANY_FORMAT_ACCEPT
    }


def test_shown_lists_names_and_hosts_and_masks_every_value() -> None:
    headers = parse_header_text(f"Referer: https://r.example/\nshop.example | Cookie: {SECRET}")
    rows = shown(headers)
    assert [(r.scope, r.name, r.value) for r in rows] == [
        ("every host", "Referer", MASK),
        ("shop.example", "Cookie", MASK),
    ]


# ---------------------------------------------------------------- the jobs service and the engine


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'app.db'}")
    database.migrate()
    return database


def parsed_input(rows: list[tuple[str, str]]) -> ParsedInput:
    return parse_text("\n".join(f"{product}\t{url}" for product, url in rows))


def _stored(db: Database, job_id: str) -> str | None:
    with db.read() as session:
        return session.execute(
            select(JOB.c.request_headers).where(JOB.c.id == job_id)
        ).scalar_one_or_none()


def test_create_job_stores_them_and_retry_failed_keeps_them(db: Database) -> None:
    headers = parse_header_text(f"shop.example | Cookie: {SECRET}", any_format=True)
    parsed = parsed_input([("P1", "https://shop.example/a.jpg")])
    job = jobs.create_job(db, parsed, request_headers=headers)
    assert load_job_headers(db, job.id) == headers
    plain = jobs.create_job(db, parsed_input([("P2", "https://shop.example/b.jpg")]))
    assert _stored(db, plain.id) is None
    assert SECRET not in job.model_dump_json()  # the public job never carries them
    jobs.retry_failed(db, job.id)
    jobs.pause_job(db, job.id)
    jobs.resume_job(db, job.id)
    assert load_job_headers(db, job.id) == headers


def test_the_job_page_summary_is_for_the_owner_only(db: Database) -> None:
    headers = parse_header_text(f"Referer: r\nshop.example | Cookie: {SECRET}")
    job = jobs.create_job(
        db, parsed_input([("P1", "https://a.example/a.jpg")]), request_headers=headers
    )
    shown_rows, any_format = jobs.request_headers_shown(db, job.id, viewer=None) or ([], True)
    assert [(r.scope, r.name, r.value) for r in shown_rows] == [
        ("every host", "Referer", MASK),
        ("shop.example", "Cookie", MASK),
    ]
    assert not any_format
    with db.write() as session:
        session.execute(update(JOB).where(JOB.c.id == job.id).values(owner="ann@example.com"))
    assert jobs.request_headers_shown(db, job.id, viewer=None) is None
    assert jobs.request_headers_shown(db, job.id, viewer="bob@example.com") is None
    assert jobs.request_headers_shown(db, job.id, viewer="ann@example.com") is not None
    plain = jobs.create_job(db, parsed_input([("P1", "https://a.example/b.jpg")]))
    assert jobs.request_headers_shown(db, plain.id, viewer=None) is None
    with pytest.raises(jobs.JobNotFound):
        jobs.request_headers_shown(db, "nosuchjob", viewer=None)


def test_set_request_headers_replaces_them(db: Database) -> None:
    job = jobs.create_job(
        db,
        parsed_input([("P1", "https://a.example/a.jpg")]),
        request_headers=parse_header_text("A: 1"),
    )
    jobs.set_request_headers(db, job.id, parse_header_text("B: 2"))
    assert load_job_headers(db, job.id).common == (("B", "2"),)
    jobs.set_request_headers(db, job.id, RequestHeaders())
    assert _stored(db, job.id) is None


def test_an_unusable_stored_row_sends_no_headers(db: Database) -> None:
    job = jobs.create_job(db, parsed_input([("P1", "https://a.example/a.jpg")]))
    with db.write() as session:
        session.execute(
            update(JOB)
            .where(JOB.c.id == job.id)
            .values(request_headers='{"headers": [["X-A", "a\\r\\nX-Injected: 1"]]}')
        )
    assert load_job_headers(db, job.id) == RequestHeaders()


def test_the_engine_cache_reads_each_job_once_for_many_concurrent_images(db: Database) -> None:
    first = jobs.create_job(
        db,
        parsed_input([("P1", "https://a.example/a.jpg")]),
        request_headers=parse_header_text("A: 1"),
    )
    second = jobs.create_job(db, parsed_input([("P1", "https://a.example/b.jpg")]))
    cache = JobHeaderCache(db, size=1, seconds=60)

    async def main() -> None:
        results: list[RequestHeaders] = []

        async def one(job_id: str) -> None:
            results.append(await cache.get(job_id))

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(one, first.id)
        assert cache.reads == 1 and len(results) == 50
        assert all(r.common == (("A", "1"),) for r in results)
        assert (await cache.get(first.id)).common == (("A", "1"),) and cache.reads == 1
        assert not await cache.get(second.id)  # size 1: the first job is dropped
        assert cache.reads == 2
        await cache.get(first.id)
        assert cache.reads == 3
        with db.write() as session:  # a replaced row is read again once the entry is old
            session.execute(update(JOB).where(JOB.c.id == first.id).values(request_headers=None))
        stale = JobHeaderCache(db, seconds=0.0)
        assert not await stale.get(first.id)
        time.sleep(0.01)
        assert not await stale.get(first.id) and stale.reads == 2

    anyio.run(main)


def test_deleting_and_retention_remove_them_with_the_job(db: Database, tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "media"))
    headers = parse_header_text(f"Cookie: {SECRET}")
    deleted = jobs.create_job(
        db, parsed_input([("P1", "https://a.example/a.jpg")]), request_headers=headers
    )
    jobs.delete_job(db, storage, deleted.id)
    assert _stored(db, deleted.id) is None
    old = jobs.create_job(
        db, parsed_input([("P1", "https://a.example/b.jpg")]), request_headers=headers
    )
    jobs.cancel_job(db, old.id)
    with db.write() as session:
        long_ago = time.time() - 40 * 86400
        session.execute(
            update(JOB).where(JOB.c.id == old.id).values(created_at=long_ago, finished_at=long_ago)
        )
    assert cleanup(db, storage, 30) == 1
    with db.read() as session:
        left = session.execute(select(JOB.c.request_headers)).scalars().all()
    assert not any(text and SECRET in text for text in left)


def test_a_deleted_jobs_cookie_leaves_the_sqlite_file(tmp_path: Path) -> None:
    """SQLite leaves deleted rows in free space unless secure_delete is on (Database turns it on
    whatever the build's default): after the job is deleted and the log checkpointed, the
    cookie's bytes are in no database file."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    db = Database(url)
    db.migrate()
    with db.read() as session:
        assert session.connection().exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    job = jobs.create_job(
        db,
        parsed_input([("P1", "https://a.example/a.jpg")]),
        request_headers=parse_header_text(f"Cookie: {SECRET}"),
    )
    for i in range(3):
        jobs.create_job(db, parsed_input([("P1", f"https://a.example/{i}.jpg")]))
    db.dispose()  # checkpointed: the row is in the main file now
    files = sorted(tmp_path.glob("app.db*"))
    assert any(SECRET.encode() in path.read_bytes() for path in files)
    db = Database(url)
    jobs.delete_job(db, LocalStorage(str(tmp_path / "media")), job.id)
    db.dispose()
    assert not any(SECRET.encode() in path.read_bytes() for path in tmp_path.glob("app.db*"))


@pytest.mark.postgres
def test_on_postgresql_they_are_stored_read_and_deleted_with_the_job(
    pg_db: Database, tmp_path: Path
) -> None:
    headers = parse_header_text(f"Referer: r\nshop.example:8443 | Cookie: {SECRET}")
    job = jobs.create_job(
        pg_db, parsed_input([("P1", "https://shop.example:8443/a.jpg")]), request_headers=headers
    )
    assert load_job_headers(pg_db, job.id) == headers
    jobs.delete_job(pg_db, LocalStorage(tmp_path / "media"), job.id)
    assert _stored(pg_db, job.id) is None
