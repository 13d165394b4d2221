"""The guarantee mutants (tests/mutation/guarantee_mutants.py) find their code by its text: a refactor that
changes that text would leave a mutant that no longer applies, and the guarantee it stands for unguarded
without anyone noticing until `make mutate`. This keeps each one applicable, in `make test`."""

from __future__ import annotations

import pytest

from tests.mutation.guarantee_mutants import MUTANTS, ROOT, Mutant


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_guarantee_mutant_still_changes_its_code_once(mutant: Mutant) -> None:
    source = (ROOT / mutant.file).read_text(encoding="utf-8")
    assert source.count(mutant.old) == 1, f"{mutant.name}: update its text in guarantee_mutants.py"
    assert mutant.new != mutant.old
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test
