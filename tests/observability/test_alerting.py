"""The alert rules (deploy/prometheus/alerts.yml), their promtool unit tests, the example scrape
configuration and the Grafana dashboard (deploy/grafana/relayline.json): valid for promtool,
documented in docs/operations.md, built only from metrics a relay and a worker really serve,
and, in a real Prometheus scraping a real relay, NoWorkerWhileTurnsQueued fires while a turn
waits with no worker and resolves once one connects.

promtool and prometheus come from Debian's ``prometheus`` package (scripts/prometheus.sh); the
tests that need them skip, saying so, when they are not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from relayline.observability.log_writer import DROPPED_RECORDS
from relayline.testing import RelayServer, WsHarness
from relayline.testing.server import free_port
from relayline.turns import figures
from tests.fixtures import (
    RelayFactory,
    Tenants,
    Workers,
    dispatcher_of,
    eventually,
    post,
    until_event,
)

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "alerts.yml"
RULE_TESTS = PROM_DIR / "alerts.test.yml"
SCRAPE_CONFIG = PROM_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "relayline.json"
OPERATIONS = ROOT / "docs" / "operations.md"

RELAY_JOB = "relayline"
WORKER_JOB = "relayline-worker"
METRICS_TOKEN = "metrics-token-" + "m" * 32
SEVERITIES = {"critical", "warning", "info"}
# Set by the leading instance only, 0 on the others: summed or maxed, never averaged.
QUEUE_FIGURES = (
    "relayline_turns_queued",
    "relayline_turn_oldest_queued_seconds",
    "relayline_queue_figures_leader",
)

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found (bash scripts/prometheus.sh installs it)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not found (bash scripts/prometheus.sh installs it)"
)


# The rules and the dashboard


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in, as Prometheus would get it."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    return re.sub(r"\$\{?(instance|worker)\}?", ".*", expr)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown document."""
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# Metric names and label names used in PromQL

_SELECTOR = re.compile(
    r"\b(?P<name>(?:relayline|process)_[a-z0-9_]+)\b"
    r'\s*(?:\{(?P<matchers>(?:[^}"]|"(?:[^"\\]|\\.)*")*)\})?'
)
_MATCHER = re.compile(r'(?P<label>[a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')


@dataclass
class Selector:
    name: str
    labels: dict[str, str]  # label name -> the value (or regex) it is matched against


def selectors(expr: str) -> Iterator[Selector]:
    for found in _SELECTOR.finditer(expr):
        matchers = found.group("matchers") or ""
        labels = {m.group("label"): m.group("value") for m in _MATCHER.finditer(matchers)}
        yield Selector(found.group("name"), labels)


@dataclass
class Exposition:
    """The names a process's /metrics serves (every sample name a family's type gives it) and
    the label names of each."""

    names: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=dict)

    def add_family(self, name: str, type_: str, labels: Iterable[str] = ()) -> None:
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"),
        }.get(type_, ("",))
        base = name.removesuffix("_total") if type_ == "counter" else name
        for suffix in suffixes:
            self.names.add(base + suffix)
            known = self.labels.setdefault(base + suffix, set())
            known.update(labels)
            if suffix == "_bucket":
                known.add("le")

    def add_text(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            self.add_family(family.name, family.type)
            for sample in family.samples:
                self.names.add(sample.name)
                self.labels.setdefault(sample.name, set()).update(sample.labels)


def worker_collectors() -> list[Any]:
    """The collectors relayline/worker/metrics.py registers."""
    from relayline.worker import metrics as worker_metrics

    return [
        value
        for value in vars(worker_metrics).values()
        if not isinstance(value, type)
        and callable(getattr(value, "describe", None))
        and callable(getattr(value, "collect", None))
    ]


def exposition_of(collectors: Iterable[Any], process: bool = False) -> Exposition:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
    found = Exposition()
    found.add_text(generate_latest(registry).decode())
    for collector in collectors:
        labels = getattr(collector, "_labelnames", None)
        for family in collector.describe():
            found.add_family(family.name, family.type, labels or getattr(family, "_labelnames", ()))
    return found


async def scrape(relay: RelayServer) -> str:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200, r.text
    return r.text


# Static checks


def test_every_alert_has_for_severity_annotations_and_a_runbook_section() -> None:
    anchors = heading_anchors(OPERATIONS.read_text())
    rules = alert_rules()
    assert rules
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    required = {
        "RelaylineDown",
        "RelaylineNotReady",
        "NoWorkerWhileTurnsQueued",
        "OldestQueuedTurnTooOld",
        "TurnFailureRatio",
        "BreakerOpen",
        "WorkerBreakerOpen",
        "HTTP5xxRatio",
        "SlowClientClosesSpike",
        "RateLimitSpike",
        "LogRecordsDropped",
        "MemoryGrowth",
        "BackupsStale",
    }
    assert required <= set(names), required - set(names)
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md", name
        assert anchor in anchors, f"{name}: no heading in docs/operations.md for #{anchor}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_queue_figures_are_summed_or_maxed_never_averaged() -> None:
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    for expr in exprs:
        if any(name in expr for name in QUEUE_FIGURES):
            assert not re.search(r"\bavg(_over_time)?\b", expr), expr
            for name in QUEUE_FIGURES:
                # Every use is inside an aggregation across instances.
                for found in re.finditer(rf"\b{name}\b", expr):
                    assert re.search(
                        r"\b(sum|max)\s*(by\s*\([^)]*\)\s*)?\(\s*$", expr[: found.start()]
                    ), expr


def test_dashboard_is_a_grafana_model_on_a_prometheus_datasource_variable() -> None:
    model = dashboard()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert model["uid"] and model["title"] and model["schemaVersion"] >= 36
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    rows = {p["title"] for p in panels if p["type"] == "row"}
    assert {"Traffic", "Turns", "Workers", "Fan-out", "Errors", "Store and processes"} <= rows
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    types = {p["type"] for p in panels}
    assert "heatmap" in types  # first token and duration histograms
    exprs = " ".join(dashboard_exprs())
    for needed in (
        "relayline_http_request_duration_seconds_bucket",
        "relayline_turns_queued",
        "relayline_turn_oldest_queued_seconds",
        "relayline_turns_failed_total",
        "relayline_turn_first_token_seconds_bucket",
        "relayline_turn_duration_seconds_bucket",
        "relayline_workers_connected",
        "relayline_worker_capacity",
        "relayline_worker_inflight",
        "relayline_workers_breaker_open",
        "relayline_worker_breaker_state",
        "relayline_connections",
        "relayline_events_delivered_total",
        "relayline_slow_client_disconnects_total",
        "relayline_redis_errors_total",
        "relayline_log_records_dropped_total",
        "relayline_store_statement_seconds_bucket",
        "relayline_store_pool_connections_in_use",
    ):
        assert re.search(rf"\b{needed}\b", exprs), needed


# promtool


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_example_scrape_config_is_valid(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(METRICS_TOKEN)
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["rule_files"] = [str(RULES)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {RELAY_JOB, WORKER_JOB}
    assert jobs[RELAY_JOB]["authorization"]["type"] == "Bearer"
    jobs[RELAY_JOB]["authorization"]["credentials_file"] = str(token)
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    done = promtool("check", "config", copy)
    assert done.returncode == 0, done.stdout + done.stderr


# Every name in the rules and the dashboard exists in a relay's or a worker's /metrics


async def test_rules_and_dashboard_use_only_metrics_that_exist(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    # A relay on Redis (RELAYLINE_REDIS_URL) also serves the Redis bus's own counter.
    import relayline.bus.redis_streams  # noqa: F401

    relay = await turn_relay(metrics_token=METRICS_TOKEN)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    await workers.start(relay)
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        turn = await post(tenant, chat, "hello")
        await until_event(ws, "message.completed", turn_id=turn)
    await tenant.http.get("/health/ready")
    dispatcher = dispatcher_of(relay)
    await figures.report(dispatcher.ctx, dispatcher.pool)

    # What a worker process serves: the worker's collectors, the log pipeline's counter
    # (`relayline worker` sets up the same logging) and the process collector.
    worker_own = exposition_of(worker_collectors())
    worker = exposition_of([*worker_collectors(), DROPPED_RECORDS], process=True)
    served = Exposition()
    served.add_text(await scrape(relay))
    # The worker runs in this process, so its metrics are on the relay's registry too; a relay
    # process serves all the rest.
    relay_side = Exposition(served.names - worker_own.names, served.labels)
    assert "relayline_turns_started_total" in relay_side.names
    assert "relayline_worker_capacity" in relay_side.names  # the relay's gauge, not the worker's
    assert "relayline_worker_turns_total" in worker.names - relay_side.names
    assert "relayline_log_records_dropped_total" in relay_side.names & worker.names
    assert "process_resident_memory_bytes" in relay_side.names & worker.names

    sources = [(f"rule {r['alert']}", r["expr"]) for r in alert_rules()]
    sources += [(f"dashboard: {e}", e) for e in dashboard_exprs()]
    problems: list[str] = []
    used: set[str] = set()
    for where, expr in sources:
        for sel in selectors(expr):
            used.add(sel.name)
            job = sel.labels.get("job")
            sides = {
                RELAY_JOB: [relay_side],
                WORKER_JOB: [worker],
                f"{RELAY_JOB}|{WORKER_JOB}": [relay_side, worker],
            }.get(job or "")
            if sides is None:
                problems.append(f"{where}: {sel.name} without a known job ({job!r})")
                continue
            for side in sides:
                if sel.name not in side.names:
                    problems.append(f"{where}: {sel.name} is not served (job {job})")
                    continue
                unknown = set(sel.labels) - {"job", "instance"} - side.labels.get(sel.name, set())
                if unknown:
                    problems.append(f"{where}: {sel.name} has no label {sorted(unknown)}")
    assert not problems, "\n".join(problems)
    assert len(used) >= 40, sorted(used)  # the regexes found what they should


# A real Prometheus


@contextlib.asynccontextmanager
async def running_prometheus(
    config: dict[str, Any], workdir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """Prometheus with ``config`` on a free 127.0.0.1 port; yields a client of its API."""
    assert PROMETHEUS is not None
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:

        async def ready() -> bool:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
            try:
                return (await http.get("/-/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=20)
        yield http
    except BaseException:
        log.flush()
        print((workdir / "prometheus.log").read_text()[-3000:])
        raise
    finally:
        await http.aclose()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def prometheus_config(rules: Path, relay: RelayServer | None, token: Path) -> dict[str, Any]:
    """The example configuration, scraping ``relay`` every second with the metrics token."""
    config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(rules)]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == RELAY_JOB]
    if relay is not None:
        jobs[0]["static_configs"] = [{"targets": [f"127.0.0.1:{relay.port}"]}]
        jobs[0]["authorization"]["credentials_file"] = str(token)
    config["scrape_configs"] = jobs if relay is not None else []
    return config


def rules_with_short_for(target: Path, seconds: int) -> Path:
    """alerts.yml as shipped, each ``for`` cut to ``seconds``."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = f"{seconds}s"
    target.write_text(yaml.safe_dump(doc))
    return target


async def api(prometheus: httpx.AsyncClient, path: str, **params: str) -> Any:
    r = await prometheus.get(path, params=params)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", r.text
    return body["data"]


async def poll(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Ask ``check`` four times a second until it holds; fail when it never does."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.25)


async def alerts_named(prometheus: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    data = await api(prometheus, "/api/v1/alerts")
    return [a for a in data["alerts"] if a["labels"]["alertname"] == name]


@needs_prometheus
async def test_prometheus_fires_no_worker_while_turns_queued_and_resolves_it(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, tmp_path: Path
) -> None:
    started = time.monotonic()
    relay = await turn_relay(metrics_token=METRICS_TOKEN)
    dispatcher = dispatcher_of(relay)
    # The gauges are process-wide: this relay's figures now, not what an earlier test left.
    await figures.report(dispatcher.ctx, dispatcher.pool)
    token = tmp_path / "token"
    token.write_text(METRICS_TOKEN)
    rules = rules_with_short_for(tmp_path / "alerts.yml", 2)
    config = prometheus_config(rules, relay, token)
    async with running_prometheus(config, tmp_path) as prometheus:

        async def relay_scraped() -> bool:
            data = await api(prometheus, "/api/v1/query", query=f'up{{job="{RELAY_JOB}"}}')
            return bool(data["result"]) and data["result"][0]["value"][1] == "1"

        await poll(relay_scraped, timeout=15)  # the bearer token is accepted
        (expr,) = [r["expr"] for r in alert_rules() if r["alert"] == "NoWorkerWhileTurnsQueued"]
        queued = f'sum(relayline_turns_queued{{job="{RELAY_JOB}"}})'
        assert (await api(prometheus, "/api/v1/query", query=queued))["result"][0]["value"][
            1
        ] == "0"
        assert (await api(prometheus, "/api/v1/query", query=expr))["result"] == []
        assert await alerts_named(prometheus, "NoWorkerWhileTurnsQueued") == []

        tenant = await tenants.new(relay)
        await post(tenant, await tenant.chat(), "is anyone there?")

        async def firing() -> bool:
            found = await alerts_named(prometheus, "NoWorkerWhileTurnsQueued")
            return any(a["state"] == "firing" for a in found)

        # The relay's sweep refreshes the queue gauges every 5 s; then a scrape, two
        # evaluations (pending, then firing after the 2 s `for`).
        await poll(firing, timeout=20)
        (result,) = (await api(prometheus, "/api/v1/query", query=expr))["result"]
        assert result["value"][1] == "1"
        (alert,) = await alerts_named(prometheus, "NoWorkerWhileTurnsQueued")
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"] == "docs/operations.md#noworkerwhileturnsqueued"
        assert float(alert["value"]) == 1  # one queued turn

        await workers.start(relay)

        async def resolved() -> bool:
            return await alerts_named(prometheus, "NoWorkerWhileTurnsQueued") == []

        await poll(resolved, timeout=20)
    assert time.monotonic() - started < 60


@needs_prometheus
async def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = rules_with_short_for(tmp_path / "alerts.yml", 60)
    config = prometheus_config(rules, None, tmp_path)
    async with running_prometheus(config, tmp_path) as prometheus:
        for expr in dashboard_exprs():
            if expr.startswith("label_values("):
                inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr)
                assert inner, expr
                expr = inner.group(1)
            await api(prometheus, "/api/v1/query", query=concrete(expr))


def test_grafana_variables_cover_the_queries() -> None:
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    for expr in dashboard_exprs():
        for variable in re.findall(r"\$\{?(\w+)", expr):
            assert variable.startswith("__") or variable in names, (variable, expr)
