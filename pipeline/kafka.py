"""Thin Kafka operations over aiokafka: create the registry's topics, read status, tail, produce.

Works the same on the embedded broker and on a real Kafka cluster; every client takes the
process's TLS / SASL settings (``pipeline.kafka_auth``). Where the embedded broker is
known to answer wrongly (``ListOffsets`` after multi-record batches), the high-water mark is read
from a fetch response instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline import kafka_auth, topics
from pipeline.settings import Settings


class TopicLayoutError(RuntimeError):
    """A topic exists with fewer partitions than the registry needs."""


@dataclass
class PartitionStatus:
    partition: int
    high_water: int


@dataclass
class TopicStatus:
    logical: str | None
    name: str
    partitions: list[PartitionStatus]

    @property
    def records(self) -> int:
        return sum(p.high_water for p in self.partitions)


@dataclass
class GroupStatus:
    group: str
    state: str
    members: int
    lag: dict[str, int] = field(default_factory=dict)


@dataclass
class ClusterStatus:
    bootstrap_servers: str
    topics: list[TopicStatus]
    groups: list[GroupStatus]


def admin_client(bootstrap: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=10000, **kafka_auth.client_options()
    )


def epoch_of(cluster_id: str | None) -> str:
    """The broker epoch of a cluster id: a short, file-name-safe digest ('' for none)."""
    if not cluster_id:
        return ""
    return hashlib.blake2b(cluster_id.encode(), digest_size=6).hexdigest()


async def broker_epoch(bootstrap: str) -> str:
    """Which life of the broker's storage the offsets read now belong to.

    Offsets identify a record only within one log: a broker that lost its records (the
    embedded one keeps them in memory; a Kafka cluster rebuilt from empty volumes) numbers new
    records from 0 again. The cluster id tells the lives apart: Kafka keeps it with its data,
    and ``worldline up`` gives its in-memory broker a new one at every start. Stored offsets
    are keyed by this epoch, so after such a restart new records are never taken for records
    already stored.
    """
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        info = await admin.describe_cluster()
    finally:
        await admin.close()
    return epoch_of(info.get("cluster_id"))


async def ensure_topics(
    settings: Settings,
    bootstrap: str,
    on_topic: Callable[[str, int, bool], None] | None = None,
) -> dict[str, int]:
    """Create every registry topic with its partition count; return name -> partitions.

    An existing topic with at least as many partitions is kept; one with fewer is an error
    (partition counts are part of the contract: keyed state depends on them).
    """
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [(settings.topic(t.name), t.partitions) for t in topics.REGISTRY]
        missing = [NewTopic(name, parts, 1) for name, parts in wanted if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing, timeout_ms=10000)
        described = await admin.describe_topics([name for name, _ in wanted])
        counts = {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
        created = {n.name for n in missing}
        for name, parts in wanted:
            have = counts.get(name, 0)
            if have < parts:
                raise TopicLayoutError(
                    f"topic {name} has {have} partitions, the registry needs {parts};"
                    " add partitions or rename the topic in settings"
                )
            if on_topic:
                on_topic(name, have, name in created)
        return counts
    finally:
        await admin.close()


async def high_water_marks(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """High-water marks read from fetch responses (correct on the embedded broker too)."""
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=1024,
        fetch_max_bytes=64 * 1024,
        **kafka_auth.client_options(),
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        hint = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, hint.get(tp, 0) - 1))
        result: dict[TopicPartition, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while loop.time() < deadline:
            await consumer.getmany(timeout_ms=200)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    result[tp] = hw
            if len(result) == len(tps):
                break
        for tp in tps:
            result.setdefault(tp, hint.get(tp, 0))
        return result
    finally:
        await consumer.stop()


async def cluster_status(settings: Settings, bootstrap: str) -> ClusterStatus:
    """Topics with partitions and high-water marks, consumer groups with their lag."""
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        names = sorted(await admin.list_topics())
        described = await admin.describe_topics(names) if names else []
        parts = {
            d["topic"]: sorted(p["partition"] for p in d["partitions"])
            for d in described
            if d["error_code"] == 0
        }
        group_ids = sorted(g[0] for g in await admin.list_consumer_groups())
    finally:
        await admin.close()
    states = await _group_states(bootstrap, group_ids)
    tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]
    hws = await high_water_marks(bootstrap, tps)
    topic_rows = [
        TopicStatus(
            logical=topics.logical_name(t, settings.topics),
            name=t,
            partitions=[PartitionStatus(p, hws[TopicPartition(t, p)]) for p in ps],
        )
        for t, ps in parts.items()
    ]
    groups: list[GroupStatus] = []
    for gid in group_ids:
        state, members = states.get(gid, ("Unknown", 0))
        lag = await _group_lag(bootstrap, gid, hws)
        groups.append(GroupStatus(gid, state, members, lag))
    return ClusterStatus(bootstrap, topic_rows, groups)


async def _group_states(bootstrap: str, group_ids: list[str]) -> dict[str, tuple[str, int]]:
    """State and member count per group. One request per group, on its own connection: the
    embedded broker answers some DescribeGroups requests in a form the client cannot decode,
    and that must cost only that group's row."""
    states: dict[str, tuple[str, int]] = {}
    for gid in group_ids:
        admin = admin_client(bootstrap)
        try:
            await admin.start()
            for resp in await admin.describe_consumer_groups([gid]):
                for g in resp.groups:
                    states[g[1]] = (g[2], len(g[5]))
        except (KafkaError, ValueError, OSError):
            states[gid] = ("unknown", 0)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
    return states


async def _group_lag(bootstrap: str, group: str, hws: dict[TopicPartition, int]) -> dict[str, int]:
    """Per-topic lag of a group: high-water mark minus committed offset, where committed."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        **kafka_auth.client_options(),
    )
    await consumer.start()
    lag: dict[str, int] = {}
    try:
        for tp, hw in hws.items():
            try:
                committed = await consumer.committed(tp)
            except KafkaError:
                continue
            if committed is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, hw - committed)
    finally:
        await consumer.stop()
    return lag


async def unread(bootstrap: str, groups: dict[str, list[TopicPartition]]) -> dict[str, int]:
    """Per consumer group, how many records of its partitions it has not committed yet (a
    partition it never committed counts from offset 0)."""
    tps = sorted({tp for parts in groups.values() for tp in parts})
    hws = await high_water_marks(bootstrap, tps)
    out: dict[str, int] = {}
    for group, parts in groups.items():
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            **kafka_auth.client_options(),
        )
        await consumer.start()
        try:
            left = 0
            for tp in parts:
                committed = await consumer.committed(tp)
                left += max(0, hws.get(tp, 0) - (committed or 0))
            out[group] = left
        finally:
            await consumer.stop()
    return out


async def tail(
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool,
    limit: int | None,
    idle_timeout_s: float | None,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Yield records of every partition of a topic, without joining a consumer group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka_auth.client_options()
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise KeyError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            for tp in tps:
                consumer.seek(tp, 0)
        else:
            hws = await high_water_marks(bootstrap, tps)
            for tp in tps:
                consumer.seek(tp, hws[tp])
        seen = 0
        loop = asyncio.get_running_loop()
        last = loop.time()
        while limit is None or seen < limit:
            batch = await consumer.getmany(timeout_ms=250)
            records = sorted(
                (r for rs in batch.values() for r in rs),
                key=lambda r: (r.timestamp, r.partition, r.offset),
            )
            if records:
                last = loop.time()
            for record in records:
                yield record
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if idle_timeout_s is not None and loop.time() - last > idle_timeout_s:
                return
    finally:
        await consumer.stop()


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[tuple[bytes | None, bytes]],
    max_request_size: int = 4 * 1024 * 1024,
) -> list[tuple[int, int]]:
    """Send (key, value) records and wait until the broker has them; return (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_request_size=max_request_size,
        linger_ms=5,
        **kafka_auth.client_options(),
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in values]
        out = []
        for fut in futures:
            md = await fut
            out.append((md.partition, md.offset))
        return out
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, as the broker describes it."""
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0 or not described["partitions"]:
        raise KeyError(f"topic {topic!r} does not exist")
    return [
        TopicPartition(topic, p["partition"])
        for p in sorted(described["partitions"], key=lambda p: p["partition"])
    ]


async def read_range(
    bootstrap: str, start: dict[TopicPartition, int], timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the partitions of ``start`` from its offset up to the partition's
    high-water mark read now, without joining a consumer group. Raises ``TimeoutError`` when
    the records cannot all be read within ``timeout_s``."""
    if not start:
        return []
    tps = sorted(start)
    ends = await high_water_marks(bootstrap, tps)
    left = {tp for tp in tps if ends[tp] > start[tp]}
    if not left:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # an offset the log no longer holds: from its start
        **kafka_auth.client_options(),
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(sorted(left))
        for tp in left:
            consumer.seek(tp, start[tp])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while left:
            if loop.time() > deadline:
                raise TimeoutError(f"{sorted(left)} not read up to {ends} in {timeout_s:g} s")
            batch = await consumer.getmany(*sorted(left), timeout_ms=250)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return out
    finally:
        await consumer.stop()
