"""compass-ci's job, as its scheduler writes it: the one module that knows the ``jobs`` layout.

compass-ci (branch ``compact``) writes each job three times (submit, dispatch, completion) with
the integer codes ``istage``/``ihealth``/``idata_readiness``, the full-text ``errid`` and
``full_text_kv``, a few plain string columns, and everything else inside the ``j`` JSON
(shared/compass-ci.md §2). Nothing else in bisect-task reads a ``jobs`` column or a ``j`` key:
it asks a :class:`CompassJob`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# §2.3, src/constants-job.cr JOB_STAGE_NAME2ID.
STAGE_CODES: dict[str, int] = {
    "submit": 0, "dispatch": 1, "boot": 2, "setup": 3, "wait_peer": 4, "running": 5,
    "post_run": 6, "manual_check": 7, "renew": 8, "finish": 9, "cancel": 10,
    "abort_invalid": 11, "abort_wait": 12, "abort_provider": 13,
}
# JOB_DATA_READINESS_NAME2ID.
READINESS_CODES: dict[str, int] = {
    "N/A": 0, "uploading": 1, "uploaded": 2, "complete": 3, "incomplete": 4, "norun": 5,
}
# JOB_HEALTH_NAME2ID.
HEALTH_CODES: dict[str, int] = {
    "unknown": 0, "success": 1, "fail": 2, "cancel": 10, "wget_kernel_fail": 20,
    "wget_initrd_fail": 21, "initrd_broken": 22, "load_disk_fail": 23, "error_mount": 24,
    "microcode_mismatch": 25, "abort_invalid": 30, "abort_wait": 31, "abort_provider": 32,
    "abort": 33, "soft_timeout": 40, "nfs_hang": 41, "oom": 42, "kernel_panic": 43,
    "terminate": 44, "disturbed": 45, "timeout_dispatch": 50, "timeout_boot": 51,
    "timeout_setup": 52, "timeout_wait_peer": 53, "timeout_running": 54,
    "timeout_post_run": 55, "timeout_manual_check": 56, "timeout_renew": 57,
}
_STAGE_NAMES = {code: name for name, code in STAGE_CODES.items()}
_READINESS_NAMES = {code: name for name, code in READINESS_CODES.items()}
_HEALTH_NAMES = {code: name for name, code in HEALTH_CODES.items()}

STAGE_FINISH = STAGE_CODES["finish"]
READINESS_COMPLETE = READINESS_CODES["complete"]
# Data compass-ci itself says a user-space bisection should not trust (constants-job.cr).
UNTRUSTED_READINESS = frozenset({READINESS_CODES["incomplete"], READINESS_CODES["norun"]})
# Healths that say nothing about the code under test: the run never happened or was cut.
_NO_VERDICT_HEALTHS = frozenset(
    name for name in HEALTH_CODES
    if name in ("cancel", "abort_invalid", "abort_wait", "abort_provider")
    or name.startswith("timeout_")
)

# What the scheduler strips from a submitted job (src/auto_depend_submit_job.cr init_job), plus
# what describes the old run rather than what to run: a rerun copies ``j`` without them.
SUBMIT_STRIPPED = frozenset({
    "id", "plugins", "errid", "stats", "start_time", "end_time", "finish_time", "job_health",
    "job_stage", "job_state", "error_ids", "result_root", "submit_time", "boot_time",
    "running_time", "istage", "ihealth", "idata_readiness", "job_data_readiness",
    "full_text_kv", "last_success_stage", "my_email", "my_name", "my_token", "job_token",
    "secrets", "boot_seconds", "run_seconds", "schedule_memmb", "is_remote", "waited_jobs",
    "wait_on", "all_params_md5", "pp_params_md5", "ss_params_md5", "host_machine",
    # A retest of one commit is another job with the same parameters: a max_run copied from
    # the bad job would make the scheduler refuse it (§7.3).
    "max_run",
})
# Account fields a submit must carry (§7.3 REQUIRED_KEYS).
ACCOUNT_FIELDS = ("my_account", "my_email", "my_name", "my_token")
# The marker compass-ci's own bisect puts on the jobs it submits (src/delimiter/utils.rb).
BISECT_MARKER = "bad_job_id"

# Columns of compact's ``jobs`` (sbin/manti-table-jobs.sql) that bisect-task reads.
JOB_COLUMNS = ("id", "suite", "category", "my_account", "testbox", "arch", "osv",
               "submit_time", "istage", "ihealth", "idata_readiness", "j", "errid")


def stage_name(code: int) -> str:
    return _STAGE_NAMES.get(code, f"unknown({code})")


def health_name(code: int) -> str:
    return _HEALTH_NAMES.get(code, f"unknown({code})")


def readiness_name(code: int) -> str:
    return _READINESS_NAMES.get(code, f"unknown({code})")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if value in (None, "", b""):
        return {}
    try:
        loaded = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _str_at(data: Mapping[str, Any], *path: str) -> str | None:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, str) and node else None


MAKEPKG_COMMIT = ("program", "makepkg", "commit")


def kv_token(key: str, value: str) -> str:
    """One ``key=value`` token as compass-ci writes it into ``full_text_kv`` (§2.5)."""
    return f"{key}={value}"


@dataclass(frozen=True)
class Source:
    """Where the code under test came from, and which ``j`` key selects its commit."""

    git_url: str
    commit: str | None
    # The path in ``j`` a rerun sets to choose another commit, e.g. ("program", "makepkg",
    # "commit"); ``mirrors`` are paths that repeat it (``pp.makepkg.commit``).
    commit_path: tuple[str, ...]
    mirrors: tuple[tuple[str, ...], ...] = ()
    package: str | None = None

    @property
    def commit_key(self) -> str:
        return ".".join(self.commit_path)

    def full_text_token(self, commit: str) -> str | None:
        """The ``full_text_kv`` token that names ``commit`` here, when compass-ci writes one
        (``pp.*`` and ``ss.*`` are in full_text_kv; ``program.*`` and ``upstream_*`` are not)."""
        for path in (*self.mirrors, self.commit_path):
            if path[0] in ("pp", "ss") and len(path) == 3:
                return kv_token(".".join(path), commit)
        return None


def source_of(data: Mapping[str, Any]) -> Source | None:
    """The repository a job tested: build jobs ``program.makepkg``, test jobs ``ss.<pkg>``,
    then compass-ci's legacy ``upstream_*`` fields."""
    url = _str_at(data, "program", "makepkg", "_url")
    if url:
        pp = data.get("pp")
        mirror = (("pp", "makepkg", "commit"),) if isinstance(pp, Mapping) and isinstance(
            pp.get("makepkg"), Mapping) else ()
        return Source(url, _str_at(data, "program", "makepkg", "commit"), MAKEPKG_COMMIT, mirror,
                      package=_str_at(data, "program", "makepkg", "project"))
    ss = data.get("ss")
    if isinstance(ss, Mapping):
        for package in sorted(ss):
            url = _str_at(ss, package, "_url")
            if url:
                return Source(url, _str_at(ss, package, "commit"), ("ss", package, "commit"),
                              package=package)
    url = _str_at(data, "upstream_url")
    if url:
        return Source(url, _str_at(data, "upstream_commit"), ("upstream_commit",),
                      package=_str_at(data, "upstream_repo"))
    return None


@dataclass(frozen=True)
class CompassJob:
    """One row of compass-ci's ``jobs`` table, read through compass-ci's own meanings."""

    id: int
    suite: str = ""
    category: str = ""
    my_account: str = ""
    testbox: str = ""
    arch: str = ""
    osv: str = ""
    submit_time: int = 0
    stage: int = 0
    health: int = 0
    readiness: int = 0
    errids: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CompassJob:
        data = _json(row.get("j"))
        errid_text = _text(row.get("errid"))
        errids = tuple(errid_text.split())
        if not errids and isinstance(data.get("errid"), list):
            errids = tuple(str(e) for e in data["errid"] if isinstance(e, str) and e)
        return cls(
            id=int(row["id"]),
            suite=_text(row.get("suite")), category=_text(row.get("category")),
            my_account=_text(row.get("my_account")), testbox=_text(row.get("testbox")),
            arch=_text(row.get("arch")), osv=_text(row.get("osv")),
            submit_time=_int(row.get("submit_time")),
            stage=_int(row.get("istage")), health=_int(row.get("ihealth")),
            readiness=_int(row.get("idata_readiness")),
            errids=tuple(dict.fromkeys(errids)), data=data,
        )

    # ---------------------------------------------------------------- state
    @property
    def stage_name(self) -> str:
        return stage_name(self.stage)

    @property
    def health_name(self) -> str:
        return health_name(self.health)

    @property
    def readiness_name(self) -> str:
        return readiness_name(self.readiness)

    @property
    def finished(self) -> bool:
        """The scheduler is done with the job (finished, cancelled or aborted)."""
        return STAGE_FINISH <= self.stage <= max(STAGE_CODES.values())

    @property
    def data_settled(self) -> bool:
        """Its final row is written: stats complete, or compass-ci says they never will be."""
        return self.finished and self.readiness >= READINESS_COMPLETE

    @property
    def result_trusted(self) -> bool:
        """Its error ids can be judged: finished normally with complete data."""
        return (self.stage == STAGE_FINISH and self.readiness == READINESS_COMPLETE
                and self.health_name not in _NO_VERDICT_HEALTHS)

    @property
    def no_verdict_reason(self) -> str | None:
        """Why this finished job says nothing about its commit (None when it does)."""
        if self.stage != STAGE_FINISH:
            return f"job {self.id} ended at stage {self.stage_name}"
        if self.readiness in UNTRUSTED_READINESS:
            return f"job {self.id} data readiness {self.readiness_name}: result not trusted"
        if self.health_name in _NO_VERDICT_HEALTHS:
            return f"job {self.id} health {self.health_name}: the test did not run to the end"
        return None

    # ---------------------------------------------------------------- what ran
    def _j(self, key: str) -> str | None:
        return _str_at(self.data, key)

    @property
    def tbox_group(self) -> str | None:
        return self._j("tbox_group")

    @property
    def os(self) -> str | None:
        return self._j("os")

    @property
    def os_version(self) -> str | None:
        return self._j("os_version")

    @property
    def os_arch(self) -> str | None:
        return self._j("os_arch") or (self.arch or None)

    @property
    def result_root(self) -> str | None:
        return self._j("result_root")

    @property
    def all_params_md5(self) -> str | None:
        return self._j("all_params_md5")

    @property
    def submitted_by_bisect(self) -> bool:
        """compass-ci's and bisect-task's bisections mark their reruns with ``bad_job_id``."""
        return self.data.get(BISECT_MARKER) not in (None, "")

    @property
    def source(self) -> Source | None:
        return source_of(self.data)

    @property
    def git_url(self) -> str | None:
        source = self.source
        return source.git_url if source else None

    @property
    def commit(self) -> str | None:
        source = self.source
        return source.commit if source else None

    def params_without_commit(self) -> dict[str, Any]:
        """What must match for another job to stand for a rerun of this one at some commit."""
        source = self.source
        params: dict[str, Any] = {
            "suite": self.suite, "tbox_group": self.tbox_group, "os": self.os,
            "os_version": self.os_version, "os_arch": self.os_arch,
        }
        for key in ("pp", "ss", "program"):
            params[key] = _without_paths(self.data.get(key), key, source)
        return params

    # ---------------------------------------------------------------- rerun
    def rerun_document(self, commit: str, account: Mapping[str, str]) -> dict[str, Any]:
        """The job to submit to test ``commit``: this job's ``j`` less what the scheduler
        strips and what describes the old run, the commit set where it was selected, the
        bisect marker, and the account fields."""
        source = self.source
        if source is None:
            raise ValueError(f"job {self.id} names no repository")
        doc = {k: _deep_copy(v) for k, v in self.data.items() if k not in SUBMIT_STRIPPED}
        for path in (source.commit_path, *source.mirrors):
            _set_path(doc, path, commit)
        doc[BISECT_MARKER] = str(self.id)
        for key in ACCOUNT_FIELDS:
            value = account.get(key)
            if value:
                doc[key] = value
        return doc


def _deep_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _set_path(doc: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    node = doc
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _without_paths(value: Any, top: str, source: Source | None) -> Any:
    if not isinstance(value, dict) or source is None:
        return value
    copy = _deep_copy(value)
    for path in (source.commit_path, *source.mirrors):
        if path[0] == top and len(path) == 3 and isinstance(copy.get(path[1]), dict):
            copy[path[1]].pop(path[2], None)
    return copy


# ---------------------------------------------------------------- writing rows
# Only compass-ci's scheduler writes ``jobs`` in production. Development, tests, the demo and
# the benches stand in for it with rows built exactly as its ``to_manticore`` builds them.
_STRING_COLUMNS = ("suite", "category", "my_account", "testbox", "arch", "osv")
_FULLTEXT_FIELDS = (
    "tbox_type", "build_type", "spec_file_name", "queue", "all_params_md5", "pp_params_md5",
    "tbox_group", "host_machine", "group_id", "os", "os_version", "pr_merge_reference_name",
    "job_stage", "job_health", "last_success_stage", "os_project", "package", "build_id",
    "os_variant", "mac_addr",
)


def _kv_tokens(prefix: str, tree: Any) -> Iterator[str]:
    if not isinstance(tree, Mapping):
        return
    for name, params in tree.items():
        if isinstance(params, Mapping):
            for key, value in params.items():
                yield kv_token(f"{prefix}.{name}.{key}", str(value))


def full_text_kv(doc: Mapping[str, Any]) -> str:
    """compass-ci's ``full_text_kv`` for a job document (§2.5)."""
    tokens = [*_kv_tokens("pp", doc.get("pp")), *_kv_tokens("ss", doc.get("ss"))]
    tokens += [kv_token(key, str(doc.get(key, ""))) for key in _STRING_COLUMNS]
    tokens += [kv_token(key, str(doc[key])) for key in _FULLTEXT_FIELDS
               if doc.get(key) not in (None, "")]
    machines = doc.get("target_machines")
    if isinstance(machines, list):
        tokens += [kv_token("target_machines", str(machine)) for machine in machines]
    return " ".join(str(token) for token in tokens)


def job_row(job_id: int, doc: Mapping[str, Any], *, stage: str, health: str = "unknown",
            readiness: str = "N/A", errids: tuple[str, ...] = (), submit_time: int = 0,
            stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``jobs`` row for job ``doc`` at one of its three writes (§2.2): the plain columns,
    the integer codes, ``j`` with the names, ``errid`` and ``full_text_kv``."""
    j = _deep_copy(dict(doc))
    j["id"] = str(job_id)
    j["job_stage"], j["job_health"], j["job_data_readiness"] = stage, health, readiness
    j["istage"] = STAGE_CODES[stage]
    j["ihealth"] = HEALTH_CODES[health]
    j["idata_readiness"] = READINESS_CODES[readiness]
    if readiness != "N/A":
        j["errid"] = list(errids)
        if stats is not None:
            j["stats"] = dict(stats)
    kv = full_text_kv(j)
    j["full_text_kv"] = kv
    return {
        "id": job_id,
        **{key: str(doc.get(key, "")) for key in _STRING_COLUMNS},
        "submit_time": submit_time, "boot_time": 0, "running_time": 0, "finish_time": 0,
        "boot_seconds": 0, "run_seconds": 0,
        "istage": j["istage"], "ihealth": j["ihealth"], "idata_readiness": j["idata_readiness"],
        "j": json.dumps(j, separators=(",", ":")), "errid": " ".join(errids), "full_text_kv": kv,
    }
