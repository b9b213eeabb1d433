"""Lease secrets: proof that a heartbeat or a finish comes from the consumer a claim was
handed to, not from anyone else who holds a consumer token (issue 15, finding 3).

A secret is an HMAC of (task id, claim number, owner) under a key only the producer uses, so
nothing per task is stored: the writer recomputes it from the task row. The claim number
grows with every claim, so a secret dies when its task is claimed again. The key is kept in
the service-state table, so a restarted (or successor) producer accepts the secrets its
predecessor handed out; it is created once by whichever producer first holds the writer role.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from common.repository import Repository

KEY_STATE_NAME = "lease_key"
KEY_BYTES = 32


def lease_secret(key: bytes, task_id: int, claim: int, owner: str) -> str:
    message = f"{task_id}:{claim}:{owner}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def lease_matches(key: bytes, task_id: int, claim: int, owner: str, presented: str) -> bool:
    """Constant-time comparison, so timing tells nothing about the right secret."""
    expected = lease_secret(key, task_id, claim, owner)
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))


async def load_or_create_key(repo: Repository) -> bytes:
    """The deployment's lease key; called by the writer only, after it holds the role, so
    two producers never both create one."""
    stored = await repo.get_state(KEY_STATE_NAME)
    if stored is not None and len(stored[0]) == KEY_BYTES * 2:
        try:
            return bytes.fromhex(stored[0])
        except ValueError:
            pass
    key = secrets.token_bytes(KEY_BYTES)
    await repo.put_state(KEY_STATE_NAME, key.hex(), "writer")
    return key
