"""The OpenAPI 3.1 document, built from the same route table as the router."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from producer.middleware import Access

ROUTE_TABLE_KEY = web.AppKey("route_table", list)

_STR = {"type": "string"}
_INT = {"type": "integer"}
_TASK_ID = {"type": "string", "pattern": r"^\d+$", "description": "63-bit task id"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": _STR, "field": _STR}},
    "SubmitTask": {
        "type": "object", "required": ["bad_job_id", "error_id"], "additionalProperties": False,
        "properties": {
            "bad_job_id": {"type": ["string", "integer"],
                           "description": "compass-ci job id of the failed job"},
            "error_id": {"type": "string", "minLength": 1, "maxLength": 8192},
            "priority": {"type": "integer", "minimum": 0, "maximum": 1000},
            "good_commit": _STR,
            "tester": {"type": "string", "description": "a tester profile NAME"},
            "timeout": {"type": "integer", "minimum": 1, "maximum": 604800,
                        "description": "seconds the bisection may take (a consumer applies "
                                       "at most its own BISECT_TASK_TIMEOUT_S); it answers "
                                       "with what its runs say a little before"},
            "repo_url": {"type": "string", "description": "allowed prefixes only"},
            "bad_commit": _STR,
        }},
    "SubmitBatch": {"type": "object", "required": ["tasks"], "properties": {
        "tasks": {"type": "array", "maxItems": 1000,
                  "items": {"$ref": "#/components/schemas/SubmitTask"}}}},
    "Task": {"type": "object", "required": ["id", "bad_job_id", "error_id", "status"],
             "properties": {"id": _TASK_ID, "bad_job_id": _STR, "error_id": _STR,
                            "status": {"enum": ["wait", "processing", "completed", "failed",
                                                "cancelled"]},
                            "priority": _INT, "git_url": {"type": ["string", "null"]},
                            "bad_commit": {"type": ["string", "null"]},
                            "confidence": {"type": ["number", "null"]}}},
    "Step": {"type": "object", "properties": {
        "commit": _STR, "verdict": {"enum": ["good", "bad", "skip"]}, "runs": _INT,
        "job_id": {"type": ["string", "null"]}, "duration_ms": _INT}},
    "TaskCreated": {"type": "object", "properties": {
        "task": {"$ref": "#/components/schemas/Task"}, "created": {"type": "boolean"}}},
    "TaskWithSteps": {"type": "object", "properties": {
        "task": {"$ref": "#/components/schemas/Task"},
        "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}}}},
    "TaskList": {"type": "object", "properties": {
        "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
        "next_cursor": {"type": ["string", "null"]}}},
    "BatchResult": {"type": "object", "properties": {
        "results": {"type": "array", "items": {"type": "object"}},
        "created": _INT, "existing": _INT, "invalid": _INT}},
    "Counts": {"type": "object", "properties": {"counts": {"type": "object"}, "total": _INT}},
    "Deleted": {"type": "object", "properties": {"deleted": _INT}},
    "Forgotten": {"type": "object", "properties": {"forgotten": _INT}},
    "Claim": {"type": "object", "required": ["consumer_id", "slots", "testers"], "properties": {
        "consumer_id": _STR, "slots": {"type": "integer", "minimum": 0, "maximum": 1000},
        "testers": {"type": "array", "items": _STR, "minItems": 1},
        "wait_s": {"type": "number", "minimum": 0, "maximum": 30,
                   "description": "long poll: wait this long for a task when none waits"}}},
    "ClaimResult": {"type": "object", "properties": {
        "tasks": {"type": "array", "items": {"allOf": [
            {"$ref": "#/components/schemas/Task"},
            {"type": "object", "properties": {
                "claim": _INT,
                "lease": {"type": "string", "description": "the secret heartbeat and finish "
                                                           "present for this task"}}}]}},
        "lease_seconds": _INT,
        "long_poll": {"type": "boolean",
                      "description": "false: the claim did not wait (no wait_s, or too many "
                                     "claims already waiting); poll again after a pause"}}},
    "Heartbeat": {"type": "object", "required": ["consumer_id", "leases"], "properties": {
        "consumer_id": _STR,
        "leases": {"type": "object", "additionalProperties": _STR, "maxProperties": 1000,
                   "description": "task id: the lease secret its claim answered with"}}},
    "HeartbeatResult": {"type": "object", "properties": {
        "renewed": {"type": "array", "items": _TASK_ID},
        "stop": {"type": "array", "items": {"type": "object", "properties": {
            "task_id": _TASK_ID, "reason": {"enum": ["cancelled", "lease_lost"]}}}},
        "lease_seconds": _INT}},
    "Finish": {"type": "object", "required": ["consumer_id", "task_id", "lease", "outcome"],
               "properties": {"consumer_id": _STR, "task_id": _TASK_ID, "lease": _STR,
                              "outcome": {"enum": ["completed", "failed", "released"]},
                              "reason": {"type": "string", "maxLength": 4000},
                              "result": {"$ref": "#/components/schemas/FinishResult"}}},
    "FinishResult": {
        "type": "object", "description": "at most 64 KiB as JSON; kept whole in the task's "
                                         "JSON, left out of list rows",
        "properties": {
            "bad_commit": {"type": "string", "maxLength": 255},
            "first_bad_id": {"type": "string", "maxLength": 255},
            "first_result_root": {"type": "string", "maxLength": 255},
            "work_dir": {"type": "string", "maxLength": 255},
            "verification": {"type": "string", "maxLength": 255},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1}}},
    "Status": {"type": "object", "properties": {"status": _STR}},
    # compass-ci's own shapes (container/bisect/app/controllers.py, branch compact).
    "LegacySubmit": {"type": "object", "required": ["bad_job_id", "error_id"],
                     "properties": {"bad_job_id": {"type": ["string", "integer"]},
                                    "error_id": _STR}},
    "LegacyAnswer": {"type": "object", "properties": {
        "code": _INT, "message": _STR,
        "data": {"type": ["object", "null"], "properties": {"task_id": _STR}}}},
    "LegacyTaskList": {"type": "object", "properties": {"tasks": {"type": "array", "items": {
        "type": "object", "properties": {"id": _INT, "bad_job_id": _STR, "error_id": _STR,
                                         "bisect_status": _STR}}}}},
    "LegacyDeleted": {"type": "object", "properties": {"status": _STR, "deleted_count": _INT}},
    "Object": {"type": "object"},
    "Text": {"type": "string"},
    "Html": {"type": "string"},
}

_SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    Access.WRITE: [{"apiToken": []}],
    Access.CONSUMER: [{"consumerToken": []}],
    Access.READ: [{}, {"apiToken": []}],
    Access.OPEN: [],
    Access.LEGACY_WRITE: [{"apiToken": []}, {}],  # {} with BISECT_LEGACY_WRITES=open
}
_MEDIA = {"Text": "text/plain", "Html": "text/html"}


def openapi_path(path: str) -> str:
    """aiohttp's ``{id:\\d+}`` becomes OpenAPI's ``{id}``."""
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


def build_document(app: web.Application) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app[ROUTE_TABLE_KEY]:
        path = openapi_path(route.path)
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _STR}
            for name in re.findall(r"\{(\w+)\}", path)]
        params += [{"name": name, "in": "query", "required": False, "schema": _STR}
                   for name in route.query]
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.method.lower() + "_"
                           + re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_"),
            "security": _SECURITY[route.access],
            "responses": {
                str(code): {"description": schema, "content": {
                    _MEDIA.get(schema, "application/json"): {
                        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}
                for code, schema in (route.responses or {200: "Object"}).items()},
        }
        if params:
            operation["parameters"] = params
        if route.body:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{route.body}"}}}}
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "bisect-task producer", "version": "1",
                 "description": "Finds the commit that broke a CI job."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer"},
                "consumerToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }
