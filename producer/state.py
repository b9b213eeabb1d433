"""What the producer's request handlers and background loops share, under typed app keys."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from common.db import Database
from common.repository import Repository
from common.supervise import Supervisor
from producer.metrics import ProducerMetrics
from producer.settings import ProducerSettings
from producer.writer import TaskStateWriter


@dataclass
class ProducerState:
    settings: ProducerSettings
    db: Database
    repo: Repository
    writer: TaskStateWriter
    metrics: ProducerMetrics
    supervisor: Supervisor = field(default_factory=Supervisor)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once this process holds the writer role; writes answer 503 before that.
    writer_ready: asyncio.Event = field(default_factory=asyncio.Event)


STATE_KEY = web.AppKey("producer_state", ProducerState)
