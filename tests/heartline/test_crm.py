"""Lead CRM on real PostgreSQL: audited stage changes, one-time conversion to a customer, search,
open tasks and CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import threading
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from heartline import crm
from heartline.crm import InvalidStage, NotWon, Stage

ADMIN = "admin:alice"


@pytest.fixture
def pg(db: asyncpg.Connection, database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection (what the admin uses), on tables the `db` fixture emptied."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def _institution(pg: psycopg.Connection[Any], name: str = "Uni Hamburg", **fields: Any) -> int:
    cols = ["name", *fields]
    row = pg.execute(f"INSERT INTO crm_institutions ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
                     " RETURNING id", [name, *fields.values()]).fetchone()
    assert row is not None
    return int(row[0])


def _contact(pg: psycopg.Connection[Any], institution_id: int, name: str, **fields: Any) -> int:
    cols = ["institution_id", "name", *fields]
    row = pg.execute(f"INSERT INTO crm_contacts ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
                     " RETURNING id", [institution_id, name, *fields.values()]).fetchone()
    assert row is not None
    return int(row[0])


def test_stage_changes_are_audited_with_the_admin_as_actor(pg: psycopg.Connection[Any]) -> None:
    inst = _institution(pg)
    assert crm.change_stage(pg, inst, "contacted", actor=ADMIN) is Stage.LEAD
    assert crm.change_stage(pg, inst, Stage.QUALIFIED, actor="admin:bob") is Stage.CONTACTED
    audit = pg.execute(
        "SELECT actor, old_values ->> 'stage', new_values ->> 'stage' FROM audit_log"
        " WHERE table_name = 'crm_institutions' AND operation = 'UPDATE' AND row_id = %s ORDER BY id",
        (str(inst),)).fetchall()
    assert audit == [(ADMIN, "lead", "contacted"), ("admin:bob", "contacted", "qualified")]
    notes = [(a["subject"], a["owner"]) for a in crm.timeline(pg, inst)]
    assert notes == [("Stage: contacted → qualified", "bob"), ("Stage: lead → contacted", "alice")]


def test_an_unknown_stage_is_refused_and_nothing_changes(pg: psycopg.Connection[Any]) -> None:
    inst = _institution(pg)
    with pytest.raises(InvalidStage) as refused:
        crm.change_stage(pg, inst, "signed", actor=ADMIN)
    assert (refused.value.code, refused.value.status) == ("INVALID_STAGE", 422)
    assert pg.execute("SELECT stage FROM crm_institutions").fetchone() == ("lead",)
    with pytest.raises(crm.InstitutionNotFound):
        crm.change_stage(pg, 999, "won", actor=ADMIN)


def test_converting_a_won_institution_creates_one_customer_once(pg: psycopg.Connection[Any]) -> None:
    inst = _institution(pg, "Klinikum Nord", city="Hamburg", country="DE", website="https://kn.example")
    _contact(pg, inst, "Dr. Weber", email="weber@kn.example", phone="+49401234567")
    with pytest.raises(NotWon, match="stage lead"):
        crm.convert_to_customer(pg, inst, actor=ADMIN)
    crm.change_stage(pg, inst, "won", actor=ADMIN)

    first = crm.convert_to_customer(pg, inst, actor=ADMIN)
    second = crm.convert_to_customer(pg, inst, actor=ADMIN)
    assert first.created and not second.created
    assert first.customer_id == second.customer_id
    customers = pg.execute("SELECT id, name, email, phone FROM customers").fetchall()
    assert customers == [(first.customer_id, "Klinikum Nord", "weber@kn.example", "+49401234567")]
    assert pg.execute("SELECT customer_id FROM crm_institutions WHERE id = %s", (inst,)).fetchone() == (
        first.customer_id,)
    actors = pg.execute("SELECT actor FROM audit_log WHERE table_name = 'customers'").fetchall()
    assert actors == [(ADMIN,)]


def test_concurrent_double_click_on_convert_creates_one_customer(
        pg: psycopg.Connection[Any], database_url: str) -> None:
    inst = _institution(pg, stage="won")
    barrier = threading.Barrier(5)
    results: list[crm.Conversion] = []

    def convert() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            results.append(crm.convert_to_customer(conn, inst, actor=ADMIN))

    threads = [threading.Thread(target=convert) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 5
    assert sum(r.created for r in results) == 1
    assert len({r.customer_id for r in results}) == 1
    assert pg.execute("SELECT count(*) FROM customers").fetchone() == (1,)


def test_search_finds_institutions_and_contacts_case_insensitively(pg: psycopg.Connection[Any]) -> None:
    hamburg = _institution(pg, "Uni Hamburg", city="Hamburg")
    bremen = _institution(pg, "Stadtwerke Bremen", city="Bremen")
    _contact(pg, bremen, "Jana Hamburger", email="jana@swb.example")
    _institution(pg, "100% Solar")
    hits = [(h["id"], h["contact_name"]) for h in crm.search(pg, "hAMBURG")]
    assert sorted(hits, key=str) == sorted([(hamburg, None), (bremen, "Jana Hamburger")], key=str)
    assert [h["id"] for h in crm.search(pg, "swb.example")] == [bremen]
    # LIKE wildcards in the query are literal characters
    assert [h["name"] for h in crm.search(pg, "%")] == ["100% Solar"]
    assert crm.search(pg, "   ") == []


def test_open_tasks_lists_only_the_admins_undone_tasks_soonest_first(pg: psycopg.Connection[Any]) -> None:
    inst = _institution(pg)
    now = dt.datetime.now(dt.UTC)
    later = crm.add_activity(pg, inst, "task", "Send offer", actor=ADMIN, due_at=now + dt.timedelta(days=3))
    overdue = crm.add_activity(pg, inst, "task", "Call back", actor=ADMIN, due_at=now - dt.timedelta(days=1))
    undated = crm.add_activity(pg, inst, "task", "Someday", actor=ADMIN)
    done = crm.add_activity(pg, inst, "task", "Done already", actor=ADMIN)
    crm.complete_task(pg, done, actor=ADMIN)
    crm.add_activity(pg, inst, "task", "Bob's", actor="admin:bob")
    crm.add_activity(pg, inst, "call", "Not a task", actor=ADMIN)

    tasks = crm.open_tasks(pg, "alice")
    assert [(t["id"], t["overdue"]) for t in tasks] == [(overdue, True), (later, False), (undated, False)]
    with pytest.raises(crm.CrmError, match="only tasks"):
        crm.add_activity(pg, inst, "call", "Dated call", actor=ADMIN, due_at=now)
    with pytest.raises(crm.ActivityNotFound):
        crm.complete_task(pg, 999_999, actor=ADMIN)


def test_pipeline_groups_institutions_by_stage(pg: psycopg.Connection[Any]) -> None:
    a = _institution(pg, "A")
    b = _institution(pg, "B", stage="proposal")
    crm.add_activity(pg, b, "task", "Follow up", actor=ADMIN)
    board = crm.pipeline(pg)
    assert list(board) == list(Stage)
    assert [i["id"] for i in board[Stage.LEAD]] == [a]
    assert [(i["id"], i["open_tasks"]) for i in board[Stage.PROPOSAL]] == [(b, 1)]
    assert board[Stage.WON] == []


def test_csv_export_lists_institutions_with_contacts_and_defuses_formulas(pg: psycopg.Connection[Any]) -> None:
    inst = _institution(pg, "=HYPERLINK(\"http://evil\")", city="Kiel", stage="qualified")
    _contact(pg, inst, "Ada", email="ada@example.org")
    _contact(pg, inst, "Bo")
    _institution(pg, "Other", stage="lost")
    rows = list(csv.DictReader(io.StringIO(crm.export_csv(pg))))
    assert [r["stage"] for r in rows] == ["qualified", "lost"]
    assert rows[0]["name"] == "'=HYPERLINK(\"http://evil\")"
    assert rows[0]["contacts"] == "Ada <ada@example.org>; Bo"
    only_lost = list(csv.DictReader(io.StringIO(crm.export_csv(pg, stage="lost"))))
    assert [r["name"] for r in only_lost] == ["Other"]
    with pytest.raises(InvalidStage):
        crm.export_csv(pg, stage="bogus")


def test_text_with_nul_characters_is_refused_or_ignored(pg: psycopg.Connection[Any]) -> None:
    inst = _institution(pg, "Uni Kiel")
    with pytest.raises(crm.CrmError, match="NUL"):
        crm.add_activity(pg, inst, "note", "bad\x00subject", actor=ADMIN)
    assert [h["id"] for h in crm.search(pg, "Ki\x00el")] == [inst]
