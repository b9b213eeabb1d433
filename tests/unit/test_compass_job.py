"""compass-ci's job shape (compact): rows as its scheduler writes them, read by name."""

from __future__ import annotations

import json

import pytest

from common.compass_job import (
    CompassJob,
    full_text_kv,
    health_name,
    job_row,
    source_of,
    stage_name,
)

# compass-ci.md §2.7, the example final row of a build job.
EXAMPLE = {
    "id": 25092516061247300, "suite": "makepkg", "category": "functional",
    "my_account": "cci-user", "testbox": "dc", "arch": "aarch64", "osv": "openeuler@24.03",
    "submit_time": 1758787572, "istage": 9, "ihealth": 33, "idata_readiness": 3,
    "errid": "makepkg.eid.drivers/net/foo.c:error:implicit-declaration-of-function "
             "last_state.test.makepkg.exit_code.2",
    "j": json.dumps({
        "id": "25092516061247300", "suite": "makepkg", "tbox_group": "dc", "os": "openeuler",
        "os_version": "24.03", "os_arch": "aarch64", "job_stage": "finish",
        "job_health": "abort", "job_data_readiness": "complete",
        "result_root": "/result/makepkg/2025-09-25/dc/openeuler-24.03-aarch64/3f2b/"
                       "25092516061247300",
        "program": {"makepkg": {"_url": "https://gitee.com/openeuler/kernel.git",
                                "commit": "3f2b1c9e", "config": "openeuler_defconfig",
                                "project": "linux"}},
        "pp": {"makepkg": {"commit": "3f2b1c9e", "config": "openeuler_defconfig",
                           "project": "linux"}},
        "errid": ["makepkg.eid.drivers/net/foo.c:error:implicit-declaration-of-function",
                  "last_state.test.makepkg.exit_code.2"],
        "stats": {"last_state.test.makepkg.exit_code.2": 1},
        "all_params_md5": "9dd4e461268c8034f5c8564e155c67a6",
        "my_token": "must-not-be-copied", "max_run": 1}),
}


def test_reads_the_example_row_by_compass_cis_names() -> None:
    job = CompassJob.from_row(EXAMPLE)
    assert job.id == 25092516061247300 and job.suite == "makepkg"
    assert (job.stage_name, job.health_name, job.readiness_name) == (
        "finish", "abort", "complete")
    assert job.finished and job.data_settled and job.result_trusted
    assert job.errids == ("makepkg.eid.drivers/net/foo.c:error:implicit-declaration-of-function",
                          "last_state.test.makepkg.exit_code.2")
    assert (job.tbox_group, job.os, job.os_version, job.os_arch) == (
        "dc", "openeuler", "24.03", "aarch64")
    assert job.result_root and job.result_root.endswith("/25092516061247300")
    assert job.git_url == "https://gitee.com/openeuler/kernel.git" and job.commit == "3f2b1c9e"
    assert job.source is not None and job.source.commit_key == "program.makepkg.commit"
    assert job.source.package == "linux" and not job.submitted_by_bisect


def test_a_rerun_copies_the_job_at_another_commit() -> None:
    job = CompassJob.from_row(EXAMPLE)
    rerun = job.rerun_document("abc123", {"my_account": "bisect", "my_token": "t",
                                          "my_email": "", "my_name": "b"})
    assert rerun["program"]["makepkg"]["commit"] == "abc123"
    assert rerun["pp"]["makepkg"]["commit"] == "abc123"
    assert rerun["program"]["makepkg"]["config"] == "openeuler_defconfig"
    assert rerun["bad_job_id"] == "25092516061247300"
    assert rerun["my_account"] == "bisect" and rerun["my_token"] == "t"
    assert "my_email" not in rerun  # empty account fields are left out
    for gone in ("id", "errid", "stats", "job_stage", "job_health", "result_root",
                 "all_params_md5", "max_run"):
        assert gone not in rerun
    # The original is untouched.
    assert job.commit == "3f2b1c9e"


@pytest.mark.parametrize(
    ("doc", "key", "url"),
    [
        ({"ss": {"linux": {"_url": "u1", "commit": "c"}}, "upstream_url": "u3"},
         "ss.linux.commit", "u1"),
        ({"upstream_url": "u3", "upstream_commit": "c"}, "upstream_commit", "u3"),
        ({"program": {"makepkg": {"_url": "u2", "commit": "c"}}, "ss": {"x": {"_url": "u1"}}},
         "program.makepkg.commit", "u2"),
    ],
)
def test_source_precedence(doc: dict[str, object], key: str, url: str) -> None:
    source = source_of(doc)
    assert source is not None and source.commit_key == key and source.git_url == url


def test_codes_by_name_and_unknown_codes() -> None:
    assert stage_name(12) == "abort_wait" and health_name(54) == "timeout_running"
    assert health_name(4294967295) == "unknown(4294967295)"  # compass-ci's -1 on Manticore


def test_job_rows_are_written_as_the_scheduler_writes_them() -> None:
    doc = {"suite": "makepkg", "category": "functional", "my_account": "u", "testbox": "dc",
           "arch": "x86_64", "osv": "debian@12", "tbox_group": "dc", "os": "debian",
           "os_version": "12", "pp": {"makepkg": {"commit": "c1"}}}
    submit = job_row(5, doc, stage="submit")
    assert (submit["istage"], submit["ihealth"], submit["idata_readiness"]) == (0, 0, 0)
    assert submit["errid"] == "" and "errid" not in json.loads(submit["j"])
    final = job_row(5, doc, stage="finish", health="fail", readiness="complete",
                    errids=("a.b", "c.d"))
    assert (final["istage"], final["ihealth"], final["idata_readiness"]) == (9, 2, 3)
    assert final["errid"] == "a.b c.d" and json.loads(final["j"])["errid"] == ["a.b", "c.d"]
    kv = final["full_text_kv"].split()
    assert kv[0] == "pp.makepkg.commit=c1" and "osv=debian@12" in kv
    assert "job_health=fail" in kv and "tbox_group=dc" in kv
    assert full_text_kv(json.loads(final["j"])) == final["full_text_kv"]
    assert final["osv"] == "debian@12" and final["arch"] == "x86_64"
