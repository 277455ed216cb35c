"""Identity and ownership (issue 19): the three modes, admins, who may see and control a job,
per-person limits, signed download links, and the CLI's --owner.

Real parts: SQLite files, the jobs service, the CLI as a subprocess.
"""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import update

from downloader import identity, jobs, links
from downloader.identity import Mode
from downloader.inputs import parse_text
from downloader.models import JOB
from downloader.services import Services
from downloader.settings import SettingsError, load_settings
from tests.test_cli import Cli, last_json, write_input
from tests.test_crash import in_process_services

ALICE, BOB, BOSS = "alice@example.com", "bob@example.com", "boss@example.com"
ROWS = "P1\thttp://127.0.0.2/img/a.jpg"


@pytest.fixture
def services(tmp_path: Path) -> Services:
    built = in_process_services(tmp_path)
    built.settings.admin_users = [BOSS]
    return built


def make(services: Services, owner: str | None, name: str = "") -> str:
    return jobs.create_job(services.db, parse_text(ROWS), name=name, owner=owner).id


def person(services: Services, email: str, mode: Mode = Mode.HEADER) -> identity.Viewer:
    found = identity.viewer(services.settings, mode, email)
    assert found is not None
    return found


# ---------------------------------------------------------------- modes and settings


def test_the_mode_follows_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = load_settings()
    assert identity.identity_mode(plain, oidc_configured=False) == Mode.SINGLE
    assert "No sign-in is configured" in identity.describe(plain, Mode.SINGLE)
    assert identity.identity_mode(plain, oidc_configured=True) == Mode.OIDC
    monkeypatch.setenv("TRUSTED_USER_HEADER", "X-Forwarded-Email")
    monkeypatch.setenv("ADMIN_USERS", " Boss@Example.com , root@example.com,")
    proxied = load_settings()
    assert identity.identity_mode(proxied, oidc_configured=True) == Mode.HEADER
    assert "X-Forwarded-Email" in identity.describe(proxied, Mode.HEADER)
    assert proxied.admin_users == [BOSS, "root@example.com"]
    assert identity.is_admin(proxied, "BOSS@example.com")
    monkeypatch.setenv("TRUSTED_USER_HEADER", "X Forwarded: Email")
    with pytest.raises(SettingsError, match="TRUSTED_USER_HEADER"):
        load_settings()
    monkeypatch.setenv("TRUSTED_USER_HEADER", "")
    assert load_settings().trusted_user_header is None


def test_the_link_secret_setting_is_checked_and_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOAD_LINK_SECRET", "short")
    with pytest.raises(SettingsError, match="DOWNLOAD_LINK_SECRET"):
        load_settings()
    monkeypatch.setenv("DOWNLOAD_LINK_SECRET", "s" * 40)
    assert load_settings().masked()["DOWNLOAD_LINK_SECRET"] == "********"
    monkeypatch.setenv("DOWNLOAD_LINK_SECRET", "")
    assert load_settings().download_link_secret is None


def test_viewers_from_a_header_or_a_provider() -> None:
    settings = load_settings(admin_users=BOSS)
    assert identity.viewer(settings, Mode.SINGLE).email == identity.SINGLE_USER  # type: ignore[union-attr]
    assert identity.viewer(settings, Mode.HEADER, " Alice@Example.COM ") == identity.Viewer(
        ALICE, admin=False, mode=Mode.HEADER
    )
    assert identity.viewer(settings, Mode.OIDC, BOSS).admin  # type: ignore[union-attr]
    for bad in (None, "", "a b@example.com", 'x"@example.com', "<a@b>", "a" * 321, 42):
        assert identity.viewer(settings, Mode.HEADER, bad) is None, bad
    # the header's every occurrence: missing, or two different values, is nobody
    assert identity.header_identity([]) is None
    assert identity.header_identity([ALICE, BOB]) is None
    assert identity.header_identity([ALICE, ALICE]) == ALICE


# ---------------------------------------------------------------- ownership


def test_each_person_sees_only_their_own_jobs_and_admins_see_all(services: Services) -> None:
    db = services.db
    alice_job, bob_job, old_job = make(services, ALICE), make(services, BOB), make(services, None)
    alice, bob, boss = person(services, ALICE), person(services, BOB), person(services, BOSS)
    single = person(services, "ignored", Mode.SINGLE)

    def listed(who: identity.Viewer, owner: str | None = None) -> set[str]:
        return {item.job.id for item in jobs.list_jobs(db, visible_to=who, owner=owner)}

    assert listed(alice) == {alice_job}
    assert listed(bob) == {bob_job}
    assert listed(boss) == {alice_job, bob_job, old_job}
    assert listed(single) == {alice_job, bob_job, old_job}
    assert listed(boss, owner=BOB) == {bob_job}
    assert listed(boss, owner=jobs.NO_OWNER) == {old_job}  # made before owners
    assert set(jobs.job_owners(db)) == {ALICE, BOB, None}

    assert jobs.job_for(db, alice_job, alice) is not None
    assert jobs.job_for(db, alice_job, alice).owner == ALICE  # type: ignore[union-attr]
    assert jobs.job_for(db, bob_job, alice) is None  # as for a job that does not exist
    assert jobs.job_for(db, "no-such-job", alice) is None
    assert jobs.job_for(db, old_job, alice) is None  # nobody's: admins only
    assert jobs.job_for(db, old_job, boss) is not None
    assert jobs.job_for(db, old_job, single) is not None  # single-user mode: everyone's


def test_controls_refuse_anyone_but_the_owner_and_admins(services: Services) -> None:
    db = services.db
    bob_job = make(services, BOB)
    alice, boss = person(services, ALICE), person(services, BOSS)
    with pytest.raises(jobs.JobNotFound) as missing:
        jobs.pause_job(db, "no-such-job", person=alice)
    for control in (jobs.pause_job, jobs.resume_job, jobs.cancel_job, jobs.retry_failed):
        with pytest.raises(jobs.JobNotFound) as refused:
            control(db, bob_job, person=alice)
        # exactly the message for a missing job, with the id asked for
        assert str(refused.value) == str(missing.value).replace("no-such-job", bob_job)
    with pytest.raises(jobs.JobNotFound):
        jobs.delete_job(db, services.storage, bob_job, person=alice)
    assert jobs.get_job(db, bob_job).status == "queued"  # nothing changed
    assert jobs.pause_job(db, bob_job, person=person(services, BOB))
    assert jobs.resume_job(db, bob_job, person=boss)
    assert jobs.cancel_job(db, bob_job, person=boss)
    jobs.delete_job(db, services.storage, bob_job, person=boss)
    with pytest.raises(jobs.JobNotFound):
        jobs.get_job(db, bob_job)


def test_the_rate_limit_counts_per_person_across_sessions(services: Services) -> None:
    db = services.db

    def create(owner: str, session: str) -> str:
        jobs.check_owner_limits(db, owner, per_minute=2, max_active=0)
        return jobs.create_job(db, parse_text(ROWS), owner=owner, created_by=session).id

    create(ALICE, "web-1")
    create(ALICE, "web-2")  # another browser session: the same person's budget
    with pytest.raises(jobs.RateLimited, match=r"2 jobs in the last minute \(limit 2\)"):
        create(ALICE, "web-3")
    create(BOB, "web-3")  # another person has their own
    jobs.check_owner_limits(db, ALICE, per_minute=0, max_active=0)  # 0 = off


def test_max_active_jobs_per_user_caps_queued_and_running(services: Services) -> None:
    db = services.db
    assert load_settings().max_active_jobs_per_user == 10
    first, second = make(services, ALICE), make(services, ALICE)
    with pytest.raises(jobs.RateLimited) as refused:
        jobs.check_owner_limits(db, ALICE, per_minute=0, max_active=2)
    assert str(refused.value) == (
        "You have 2 jobs queued or running (limit 2 per person); wait for one to finish, or "
        "pause or cancel one, before starting another."
    )
    jobs.check_owner_limits(db, BOB, per_minute=0, max_active=2)  # Bob has none
    jobs.pause_job(db, first)
    with db.write() as session:  # a finished job no longer counts either
        session.execute(update(JOB).where(JOB.c.id == second).values(status="completed"))
    jobs.check_owner_limits(db, ALICE, per_minute=0, max_active=1)


# ---------------------------------------------------------------- signed links


def test_a_signed_link_verifies_until_it_expires() -> None:
    secret, now = b"k" * 32, 1_000_000.0
    query = dict(parse_qsl(links.sign(secret, "job1", ALICE, ttl=600, now=now)))
    assert links.verify(secret, "job1", query, now=now + 599) == links.SignedLink(
        ALICE, int(now + 600)
    )
    with pytest.raises(links.LinkError, match="expired"):
        links.verify(secret, "job1", query, now=now + 601)


@pytest.mark.parametrize(
    "change",
    [
        {"user": BOB},  # another person
        {"expires": "9999999999"},  # a later expiry
        {"signature": "0" * 64},
        {"signature": "é" * 64},  # not even ASCII
        {"expires": "1e9"},
    ],
)
def test_an_altered_link_is_refused(change: dict[str, str]) -> None:
    secret, now = b"k" * 32, 1_000_000.0
    query = dict(parse_qsl(links.sign(secret, "job1", ALICE, ttl=600, now=now))) | change
    with pytest.raises(links.LinkError, match="damaged"):
        links.verify(secret, "job1", query, now=now)


def test_a_link_is_for_one_job_and_one_secret_and_needs_every_part() -> None:
    secret, now = b"k" * 32, 1_000_000.0
    query = dict(parse_qsl(links.sign(secret, "job1", ALICE, ttl=600, now=now)))
    with pytest.raises(links.LinkError, match="damaged"):
        links.verify(secret, "job2", query, now=now)
    with pytest.raises(links.LinkError, match="damaged"):
        links.verify(b"x" * 32, "job1", query, now=now)
    for missing in ("user", "expires", "signature"):
        partial = {k: v for k, v in query.items() if k != missing}
        with pytest.raises(links.LinkError, match="needs a signed link"):
            links.verify(secret, "job1", partial, now=now)


def test_the_link_secret_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = load_settings(media_root=str(tmp_path / "data" / "media"))
    first = links.link_secret(settings)
    path = tmp_path / "data" / links.SECRET_FILE
    assert path.is_file() and len(first) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert links.link_secret(settings) == first  # kept: links survive a restart
    configured = load_settings(
        media_root=str(tmp_path / "data" / "media"), download_link_secret="c" * 40
    )
    assert links.link_secret(configured) == b"c" * 40


# ---------------------------------------------------------------- the command line


def test_submit_and_run_record_the_owner(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.env = {k: v for k, v in cli.env.items() if k != "DOWNLOADER_USER"}
    source = write_input(tmp_path / "in.csv", [("P1", "http://127.0.0.2/status/404")])
    other = write_input(tmp_path / "in2.csv", [("P2", "http://127.0.0.2/status/404")])
    third = write_input(tmp_path / "in3.csv", [("P3", "http://127.0.0.2/status/404")])

    default = cli("submit", str(source))
    assert default.returncode == 0, default.stderr
    given = cli("submit", str(other), "--owner", "Alice@Example.com")
    assert given.returncode == 0, given.stderr
    from_env = cli("run", str(third), "--quiet", DOWNLOADER_USER=BOB)
    assert from_env.returncode == 0, from_env.stderr
    owners = dict(cli.sql("SELECT id, owner FROM job"))
    assert owners[last_json(default.stdout)["job_id"]] == "cli"
    assert owners[last_json(given.stdout)["job_id"]] == ALICE
    assert owners[last_json(from_env.stdout)["job_id"]] == BOB

    bad = cli("submit", str(source), "--owner", "not an e-mail")
    assert bad.returncode == 2 and "--owner" in bad.stderr and "Traceback" not in bad.stderr
    assert cli.sql("SELECT count(*) FROM job") == [(3,)]


def test_jobs_made_before_owners_have_none(services: Services) -> None:
    job_id = jobs.create_job(services.db, parse_text(ROWS)).id
    assert jobs.get_job(services.db, job_id).owner is None
