"""``tests.load.flow_bounds`` in smoke mode: its scratch schemas still apply to today's
migrations (each rewrite asserts it found what it replaces) and every variant's rides end
settled. Nothing here asserts speed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_DSN
from tests.load.flow_bounds import SCHEMAS, Variant, step_sql

ROOT = Path(__file__).resolve().parents[2]


def test_variants_parse() -> None:
    assert Variant.parse("control") == Variant("control", "control", 0, 1)
    assert Variant.parse("all/g16/c8") == Variant("all/g16/c8", "all", 16, 8)
    with pytest.raises(ValueError, match="unknown schema"):
        Variant.parse("nothing")
    with pytest.raises(ValueError, match="unknown modifier"):
        Variant.parse("control/x3")


@pytest.mark.parametrize("schema", SCHEMAS)
def test_step_statements_rewrite(schema: str) -> None:
    for step in ("activate", "finish_on_terms", "settle"):
        text = step_sql(schema, step, "public.orders_p20261201")
        assert "public.orders_p20261201" in text
        if schema in ("nopay", "payrow", "all"):
            assert "payment_operations" not in text
        assert ("payment_due_at" in text) == (schema in ("payrow", "all"))


def test_every_schema_runs() -> None:
    env = {**os.environ, "SCOOTERS_DATABASE_URL": ADMIN_DSN.rsplit("/", 1)[0] + "/scooters"}
    variants = ",".join([*SCHEMAS, "control/g2", "control/c2"])
    command = [sys.executable, "-m", "tests.load.flow_bounds", "--orders", "4", "--rounds", "1"]
    done = subprocess.run(
        [*command, "--variants", variants, "--z", "512"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "median of the 1 differences" in done.stdout
