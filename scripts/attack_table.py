#!/usr/bin/env python3
"""The hostile-network table: every attack of tests/pipeline/test_hostile_network.py, with the
error the victim reported and the time it took to fail.

    python scripts/attack_table.py          (about a minute)
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package

from tests.helpers import mitm  # noqa: E402
from tests.pipeline import test_hostile_network as H  # noqa: E402


def victim_error(setup, where, direction):
    if direction == "down":  # the orchestrator reads what the stage sends
        return None
    victim = setup.stages[0] if where == "control" else setup.stages[1]
    mitm.wait_until(lambda: victim.worker.last_error is not None, 2.0)
    return victim.worker.last_error


def main():
    rows = []
    for attack in sorted(H.ATTACKS):
        make, direction = H.ATTACKS[attack]
        for where in ("control", "data", "relay"):
            tamper = make()
            setup = H.Setup(
                where, **({"tamper_up": tamper} if direction == "up" else {"tamper_down": tamper})
            )
            try:
                t0 = time.monotonic()
                err = H.run_once(setup)
                elapsed = time.monotonic() - t0
                victim = victim_error(setup, where, direction)
                rows.append(
                    (
                        attack,
                        where,
                        type(victim).__name__ if victim else "-",
                        f"{type(err).__name__}: {err}"[:110],
                        f"{elapsed:.2f} s",
                    )
                )
            finally:
                setup.close()
    print("| attack | where | victim stage's error | orchestrator's error | time to fail |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(x.replace("|", "/") for x in r) + " |")


if __name__ == "__main__":
    main()
