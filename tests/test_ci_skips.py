"""A Slurm or NVMe test that cannot run is skipped on a developer's machine and fails in CI (CI=true), whose
machine has root, Slurm and libaio: there a skip would turn a broken environment into a green suite."""

from __future__ import annotations

from pathlib import Path

import pytest

import slurm_cluster
import test_nvme_offload
from conftest import skip_or_fail


def outcome(check, *args) -> type[BaseException]:
    """The pytest outcome (Skipped or Failed) that ``check(*args)`` raises."""
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)) as raised:
        check(*args)
    return raised.type


@pytest.mark.parametrize("ci, expected", [("true", pytest.fail.Exception), (None, pytest.skip.Exception),
                                          ("false", pytest.skip.Exception), ("1", pytest.skip.Exception)])
def test_a_test_that_cannot_run_fails_only_when_ci_is_true(monkeypatch, ci, expected):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert outcome(skip_or_fail, "no Slurm here") is expected


def test_the_failure_in_ci_gives_the_reason(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no Slurm here"):
        skip_or_fail("no Slurm here")


@pytest.mark.parametrize("ci, expected", [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_slurm_tests_without_root_fail_in_ci_and_skip_elsewhere(monkeypatch, ci, expected):
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert outcome(slurm_cluster.require_slurm) is expected


@pytest.mark.parametrize("ci, expected", [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_the_nvme_test_without_libaio_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, expected):
    monkeypatch.setattr(test_nvme_offload, "LIBAIO_HEADER", Path(tmp_path / "no-libaio.h"))
    monkeypatch.setattr(test_nvme_offload.os, "geteuid", lambda: 1000)  # not root: no apt-get install
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert outcome(test_nvme_offload.require_libaio) is expected
