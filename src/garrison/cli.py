"""The ``garrison`` command: ``garrison check CONFIG``, ``garrison demo``, ``garrison status URL``.

``check`` validates a TOML/YAML configuration file and prints the runtime settings, the
pipeline each service would get (stages outermost first, with their key settings) and the
supervision tree a runtime would start for it; no actor is started. ``demo`` runs a live
simulation (see :mod:`garrison._demo`). ``status`` reads a running daemon's JSON status
endpoint (``examples/daemon.py``) and renders its supervision tree and pipelines. Output
goes through rich when stdout is a terminal and is plain text (no escape codes) otherwise.

Exit codes: 0 success; 2 an invalid configuration, a missing file, a usage error or a
daemon that cannot be reached (or does not answer 200);
130 a demo interrupted with Ctrl-C (its report is still written).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from garrison.actors.bulkhead import BulkheadConfig
from garrison.config import ReliabilityConfig, ServiceConfig, load_config
from garrison.errors import ConfigError
from garrison.pipeline import DEFAULT_POOL, STAGE_ORDER
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig

__all__ = ["main"]

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130

# Restart intensity of a pipeline's supervisor (Runtime.pipeline's defaults).
_PIPELINE_RESTARTS = (10, 10.0)


def use_rich(stream: TextIO | None = None) -> bool:
    """Rich output only on a terminal (and not with TERM=dumb)."""
    stream = stream if stream is not None else sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


# -- check ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageLine:
    """One stage of a pipeline as ``check`` shows it."""

    stage: str
    settings: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class PipelinePlan:
    """The pipeline ``check`` says a service would get."""

    name: str
    title: str
    stages: list[StageLine] = field(default_factory=list)


def _num(value: float) -> str:
    return f"{value:g}"


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g}s"


def _exception_names(specs: Sequence[object]) -> str:
    names = [
        spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec)) for spec in specs
    ]
    return ", ".join(str(name) for name in names) or "none"


def _describe_rate(config: RateLimitConfig) -> str:
    limits = ", ".join(f"{w.label}={w.limit}" for w in config.windows)
    parts = [f"limits {limits}", f"algorithm {config.algorithm}", f"on_limit {config.on_limit}"]
    if config.on_limit == "wait":
        parts.append(
            f"queue_size {config.queue_size}, queue_timeout {_seconds(config.queue_timeout)}, "
            f"max_wait_time {_seconds(config.max_wait_time)}"
        )
    throttle = f"throttle {config.throttle_strategy}"
    if config.throttle_strategy != "fixed":
        throttle += f" (x{_num(config.backoff_multiplier)}"
        if config.throttle_strategy == "adaptive":
            throttle += f", min rate {_num(config.min_rate_fraction)}"
        throttle += ")"
    parts.append(throttle)
    return "; ".join(parts)


def _describe_breaker(config: CircuitBreakerConfig) -> str:
    parts = [
        f"failure_threshold {config.failure_threshold}",
        f"recovery_timeout {_seconds(config.recovery_timeout)}",
        f"error_rate_threshold {_num(config.error_rate_threshold)} over a {config.window_type} "
        f"window of {_num(config.window_size)} (min_calls {config.min_calls})",
        f"half_open_max_calls {config.half_open_max_calls}",
    ]
    if config.slow_call_duration is not None:
        parts.append(
            f"slow calls > {_seconds(config.slow_call_duration)} "
            f"(rate threshold {_num(config.slow_call_rate_threshold)})"
        )
    if config.recovery_backoff_multiplier != 1.0:
        parts.append(
            f"recovery backoff x{_num(config.recovery_backoff_multiplier)} "
            f"up to {_seconds(config.max_recovery_timeout)}"
        )
    return "; ".join(parts)


def _describe_retry(config: RetryConfig) -> str:
    parts = [
        f"max_attempts {config.max_attempts}",
        f"{config.backoff_strategy} backoff, base {_seconds(config.base_delay)}, "
        f"max {_seconds(config.max_delay)}, jitter {config.jitter_kind}",
        f"retry on {_exception_names(config.retry_exceptions)}",
    ]
    if config.deadline is not None:
        parts.append(f"deadline {_seconds(config.deadline)}")
    if config.budget is not None:
        parts.append(
            f"budget {_num(config.budget.max_tokens)} tokens, ratio "
            f"{_num(config.budget.token_ratio)}"
        )
    return "; ".join(parts)


def _describe_timeout(config: TimeoutConfig) -> str:
    if not config.adaptive:
        return f"fixed {_seconds(config.base_timeout)}"
    return (
        f"base {_seconds(config.base_timeout)}, adaptive (mean + {_num(config.k)} stdev after "
        f"{config.min_samples} samples, min {_seconds(config.effective_min_timeout)}, "
        f"max {_seconds(config.effective_max_timeout)})"
    )


def _describe_bulkhead(config: BulkheadConfig, *, default: bool) -> str:
    text = (
        f"max_workers {config.max_workers}, max_concurrent {config.concurrency}, "
        f"max_queue {config.max_queue}"
    )
    if config.max_wait is not None:
        text += f", max_wait {_seconds(config.max_wait)}"
    if default:
        text += " (not configured: the default pool)"
    return text


def plan_pipeline(name: str, title: str, service: ServiceConfig) -> PipelinePlan:
    """The stages, outermost first, that ``rt.pipeline(name)`` would build for ``service``."""
    lines: list[StageLine] = []
    for stage in STAGE_ORDER:
        if stage == "fallback":
            lines.append(
                StageLine(
                    stage, "not configurable from files (pass fallback= to rt.pipeline)", False
                )
            )
        elif stage == "retry":
            if service.retry is not None:
                lines.append(StageLine(stage, _describe_retry(service.retry)))
        elif stage == "circuit_breaker":
            if service.circuit_breaker is not None:
                lines.append(StageLine(stage, _describe_breaker(service.circuit_breaker)))
        elif stage == "rate_limiter":
            if service.rate_limit is not None:
                lines.append(StageLine(stage, _describe_rate(service.rate_limit)))
        elif stage == "timeout":
            if service.timeout is not None:
                lines.append(StageLine(stage, _describe_timeout(service.timeout)))
        elif stage == "bulkhead":
            pool = service.bulkhead
            settings = _describe_bulkhead(pool or DEFAULT_POOL, default=pool is None)
            lines.append(StageLine(stage, settings))
    return PipelinePlan(name, title, lines)


def runtime_settings(config: ReliabilityConfig) -> list[tuple[str, str, bool]]:
    """(key, value, from the file) for each Runtime setting a config file may give."""
    from garrison._runtime import Runtime  # noqa: PLC0415 (keeps `check` light)

    parameters = inspect.signature(Runtime.__init__).parameters
    settings = []
    for key in ("name", "max_restarts", "within_seconds"):
        given = key in config.runtime
        value = config.runtime[key] if given else parameters[key].default
        settings.append((key, str(value), given))
    return settings


def plans(config: ReliabilityConfig) -> list[PipelinePlan]:
    """One plan per configured service, then the defaults (any other service name)."""
    result = [
        plan_pipeline(name, f"service {name!r}", service)
        for name, service in config.services.items()
    ]
    result.append(plan_pipeline("<name>", "defaults (any other service)", config.defaults))
    return result


def _tree_lines(root: str, root_restarts: str, pipelines: list[PipelinePlan]) -> list[str]:
    max_restarts, within = _PIPELINE_RESTARTS
    lines = [f"{root} (root supervisor, one_for_one, {root_restarts})"]
    for index, plan in enumerate(pipelines):
        last = index == len(pipelines) - 1
        lines.append(
            f"{'└── ' if last else '├── '}pipeline:{plan.name} (supervisor, one_for_one, "
            f"max {max_restarts} restarts in {_num(within)}s, permanent)"
        )
        indent = "    " if last else "│   "
        lines.append(f"{indent}└── stages (one fused actor, permanent)")
        started = [s for s in reversed(plan.stages) if s.present]  # innermost first
        for position, stage in enumerate(started):
            branch = "└── " if position == len(started) - 1 else "├── "
            lines.append(f"{indent}    {branch}{stage.stage}")
    return lines


def _check(path_text: str) -> int:
    path = Path(path_text)
    if not path.exists():
        print(f"garrison check: {path}: no such file", file=sys.stderr)
        return EXIT_INVALID
    if path.is_dir():
        print(f"garrison check: {path}: is a directory, not a config file", file=sys.stderr)
        return EXIT_INVALID
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"garrison check: invalid configuration: {error}", file=sys.stderr)
        return EXIT_INVALID
    settings = runtime_settings(config)
    pipelines = plans(config)
    root = next(value for key, value, _ in settings if key == "name")
    restarts = {key: value for key, value, _ in settings}
    root_restarts = f"max {restarts['max_restarts']} restarts in {restarts['within_seconds']}s"
    tree = _tree_lines(root, root_restarts, pipelines)
    if use_rich():
        _print_check_rich(path, settings, pipelines, tree)
    else:
        _print_check_plain(path, settings, pipelines, tree)
    return EXIT_OK


def _print_check_plain(
    path: Path,
    settings: list[tuple[str, str, bool]],
    pipelines: list[PipelinePlan],
    tree: list[str],
) -> None:
    out: list[str] = [f"{path}: valid", "", "runtime:"]
    for key, value, given in settings:
        out.append(f"  {key} = {value}{'' if given else '  (default)'}")
    out.append("")
    out.append("pipelines (stages outermost first):")
    width = max(len(stage) for stage in STAGE_ORDER)
    for plan in pipelines:
        out.append(f"  {plan.title}: pipeline:{plan.name}")
        for line in plan.stages:
            mark = "  " if line.present else "- "
            out.append(f"    {mark}{line.stage:<{width}}  {line.settings}")
    out.append("")
    out.append("supervision tree:")
    out.extend(f"  {line}" for line in tree)
    print("\n".join(out))


def _print_check_rich(
    path: Path,
    settings: list[tuple[str, str, bool]],
    pipelines: list[PipelinePlan],
    tree: list[str],
) -> None:
    from rich.console import Console  # noqa: PLC0415 (the cli extra)
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    console.print(f"[bold green]✔[/] [bold]{path}[/]: valid")
    runtime = Table(title="runtime", title_justify="left", show_header=False, box=None)
    for key, value, given in settings:
        runtime.add_row(f"  {key}", value, "" if given else "[dim](default)[/]")
    console.print(runtime)
    for plan in pipelines:
        table = Table(
            title=f"{plan.title}: pipeline:{plan.name}", title_justify="left", expand=False
        )
        table.add_column("stage", style="cyan", no_wrap=True)
        table.add_column("settings")
        for stage in plan.stages:
            if stage.present:
                table.add_row(stage.stage, stage.settings)
            else:
                table.add_row(f"[dim]{stage.stage}[/]", f"[dim]{stage.settings}[/]")
        console.print(table)
    console.print("[bold]supervision tree[/]")
    for line in tree:
        console.print(f"  {line}", highlight=False)


# -- demo -----------------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value > 24 * 3600:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds (and at most a day), got {text}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from garrison import _demo  # noqa: PLC0415 (rich, threads: only when asked for)

    return _demo.run(
        duration=args.duration,
        out=Path(args.out) if args.out is not None else None,
        plot=not args.no_plot,
        live=use_rich(),
        seed=args.seed,
    )


# -- status ---------------------------------------------------------------------------------

STATUS_TIMEOUT = 5.0
"""Seconds ``garrison status`` waits for the daemon's answer."""


def status_url(url: str) -> str:
    """``url`` with ``http://`` when it has no scheme and ``/status`` when it has no path."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/status")
    return urlunsplit(parts)


def _fetch_status(url: str) -> tuple[dict[str, Any] | None, str]:
    """(the status document, "") or (None, what went wrong)."""
    try:
        import httpx  # noqa: PLC0415 (the http extra; only `status` needs it)
    except ImportError:
        return None, "needs httpx, which garrison installs with its 'http' extra"

    try:
        response = httpx.get(url, timeout=STATUS_TIMEOUT, headers={"accept": "application/json"})
    except httpx.HTTPError as error:
        return None, f"cannot reach {url}: {type(error).__name__}: {error}"
    except (httpx.InvalidURL, ValueError) as error:  # an unusable URL
        return None, f"bad URL {url!r}: {error}"
    if response.status_code != 200:
        return None, f"{url} answered {response.status_code} {response.reason_phrase}"
    try:
        data = response.json()
    except ValueError:
        return None, f"{url} did not answer with JSON"
    if not isinstance(data, dict):
        return None, f"{url} answered JSON that is not an object"
    return data, ""


def _text(value: object) -> str:
    if isinstance(value, float):
        return _num(value)
    return "-" if value is None else str(value)


def _node_label(node: dict[str, Any]) -> str:
    """``name (Class): state, restarts N[, gave up N]`` for one node of a tree."""
    name = _text(node.get("name", "?"))
    kind = node.get("actor_class")
    label = f"{name} ({kind})" if kind else name
    parts = [_text(node.get("state", "?")), f"restarts {_text(node.get('restarts', 0))}"]
    if node.get("give_ups"):
        parts.append(f"gave up {_text(node['give_ups'])}")
    return f"{label}: {', '.join(parts)}"


def _node_children(node: dict[str, Any]) -> list[dict[str, Any]]:
    children = node.get("children")
    if not isinstance(children, list):
        return []
    return [child for child in children if isinstance(child, dict)]


def status_tree_lines(tree: dict[str, Any]) -> list[str]:
    """The supervision tree as indented plain lines (``├──`` / ``└──`` branches)."""
    lines = [_node_label(tree)]

    def walk(node: dict[str, Any], prefix: str) -> None:
        children = _node_children(node)
        for index, child in enumerate(children):
            last = index == len(children) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{_node_label(child)}")
            walk(child, prefix + ("    " if last else "│   "))

    walk(tree, "")
    return lines


def pipeline_summary(status: dict[str, Any]) -> str:
    """One line for one pipeline's ``status()``: breaker, limiter and bulkhead numbers."""
    if "error" in status and not isinstance(status.get("error"), dict):
        return f"status unavailable ({_text(status['error'])})"
    parts: list[str] = []
    breaker = status.get("circuit_breaker")
    if isinstance(breaker, dict):
        text = f"breaker {_text(breaker.get('state'))}"
        details = []
        if "consecutive_failures" in breaker:
            details.append(
                f"failures {_text(breaker.get('consecutive_failures'))}"
                f"/{_text(breaker.get('failure_threshold'))}"
            )
        rate = breaker.get("error_rate")
        if isinstance(rate, int | float):
            details.append(f"error rate {rate:.0%}")
        retry_after = breaker.get("retry_after")
        if isinstance(retry_after, int | float) and retry_after > 0:
            details.append(f"retry after {retry_after:.1f}s")
        parts.append(f"{text} ({', '.join(details)})" if details else text)
    limiter = status.get("rate_limiter")
    if isinstance(limiter, dict):
        queued = limiter.get("waiting", 0)
        parts.append(
            f"limiter admitted {_text(limiter.get('admitted'))} "
            f"rejected {_text(limiter.get('rejected'))} queued {_text(queued)}"
        )
    bulkhead = status.get("bulkhead")
    if isinstance(bulkhead, dict):
        parts.append(
            f"bulkhead {_text(bulkhead.get('in_use'))}/{_text(bulkhead.get('max_concurrent'))} "
            f"in use, {_text(bulkhead.get('queued'))} queued, "
            f"{_text(bulkhead.get('rejected'))} rejected"
        )
    others = [stage for stage in STAGE_ORDER if stage in status and stage not in _SUMMARISED]
    if others:
        parts.append(f"stages {', '.join(others)}")
    return "; ".join(parts) if parts else "no stages reported"


_SUMMARISED = ("circuit_breaker", "rate_limiter", "bulkhead")


def _status_parts(
    data: dict[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]], str]:
    """(tree, pipelines, heading) from a status document (tolerant of what is missing)."""
    tree = data.get("tree")
    if not isinstance(tree, dict) and "children" in data:
        tree = data  # a bare rt.tree()
    raw = data.get("pipelines")
    pipelines = (
        {str(name): value for name, value in raw.items() if isinstance(value, dict)}
        if isinstance(raw, dict)
        else {}
    )
    runtime = data.get("runtime")
    heading = ""
    if isinstance(runtime, dict):
        heading = f"runtime {_text(runtime.get('name'))}: {_text(runtime.get('state'))}"
        if data.get("draining"):
            heading += " (draining)"
    return (tree if isinstance(tree, dict) else None), pipelines, heading


def _status(url_text: str) -> int:
    url = status_url(url_text)
    data, problem = _fetch_status(url)
    if data is None:
        print(f"garrison status: {problem}", file=sys.stderr)
        return EXIT_INVALID
    tree, pipelines, heading = _status_parts(data)
    if use_rich():
        _print_status_rich(url, heading, tree, pipelines)
    else:
        _print_status_plain(url, heading, tree, pipelines)
    return EXIT_OK


def _print_status_plain(
    url: str,
    heading: str,
    tree: dict[str, Any] | None,
    pipelines: dict[str, dict[str, Any]],
) -> None:
    out = [f"{url}: {heading}" if heading else url, "", "supervision tree:"]
    if tree is None:
        out.append("  (not reported)")
    else:
        out.extend(f"  {line}" for line in status_tree_lines(tree))
    out.append("")
    out.append("pipelines:")
    if not pipelines:
        out.append("  (none)")
    for name, status in pipelines.items():
        out.append(f"  {name}: {pipeline_summary(status)}")
    print("\n".join(out))


def _print_status_rich(
    url: str,
    heading: str,
    tree: dict[str, Any] | None,
    pipelines: dict[str, dict[str, Any]],
) -> None:
    from rich.console import Console  # noqa: PLC0415 (the cli extra)
    from rich.markup import escape  # noqa: PLC0415
    from rich.tree import Tree  # noqa: PLC0415

    console = Console()
    console.print(f"[bold]{escape(url)}[/]" + (f": {escape(heading)}" if heading else ""))
    if tree is None:
        console.print("[dim]supervision tree not reported[/]")
    else:

        def label(node: dict[str, Any]) -> str:
            state = _text(node.get("state", "?"))
            colour = "green" if state == "running" else "yellow"
            text = escape(_node_label(node))
            return text.replace(escape(state), f"[{colour}]{escape(state)}[/]", 1)

        root = Tree(label(tree), guide_style="dim")

        def walk(node: dict[str, Any], branch: Tree) -> None:
            for child in _node_children(node):
                walk(child, branch.add(label(child)))

        walk(tree, root)
        console.print(root)
    console.print("[bold]pipelines[/]")
    if not pipelines:
        console.print("  [dim](none)[/]")
    for name, status in pipelines.items():
        console.print(f"  [cyan]{escape(name)}[/]: {escape(pipeline_summary(status))}")


# -- entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``garrison`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="garrison",
        description="garrison: resilience actors and supervision trees on pykka.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a TOML/YAML config and show the pipelines and tree it would build",
        description=(
            "Validate a TOML/YAML configuration and print the runtime settings, the pipeline "
            "each service would get and the supervision tree (no actor is started). "
            "Exit 0 when valid, 2 otherwise (the error names the full key path)."
        ),
    )
    check.add_argument("config", metavar="CONFIG", help="a .toml, .yaml or .yml file")
    demo = commands.add_parser(
        "demo",
        help="run a live demo against a simulated flaky service",
        description=(
            "Drive clients through pipelines in front of a simulated flaky service "
            "(latency, error bursts, 429s, an outage, a recovery, an injected actor crash) "
            "with a live dashboard; write report.json and timeline.png to a folder."
        ),
    )
    demo.add_argument(
        "--duration",
        type=_positive_seconds,
        default=20.0,
        metavar="SECONDS",
        help="how long the clients run (default: 20)",
    )
    demo.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="where to write report.json and timeline.png (default: a new folder "
        "garrison-demo-<timestamp> in the current directory)",
    )
    demo.add_argument("--no-plot", action="store_true", help="do not write timeline.png")
    demo.add_argument("--seed", type=int, default=7, help=argparse.SUPPRESS)
    status = commands.add_parser(
        "status",
        help="show a running daemon's supervision tree and pipelines",
        description=(
            "Read a running daemon's JSON status endpoint (examples/daemon.py serves one) and "
            "show its supervision tree (each node's state and restarts) and one line per "
            "pipeline (breaker state, limiter counters, bulkhead occupancy). A URL without a "
            "path means /status. Exit 0, or 2 when the daemon cannot be reached or does not "
            "answer 200."
        ),
    )
    status.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:8080")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``garrison`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exit_:  # usage errors (2) and --help (0)
        code = exit_.code
        return code if isinstance(code, int) else EXIT_INVALID
    command: Any = args.command
    if command == "check":
        return _check(args.config)
    if command == "demo":
        return _demo(args)
    if command == "status":
        return _status(args.url)
    parser.print_help(sys.stderr)
    return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
