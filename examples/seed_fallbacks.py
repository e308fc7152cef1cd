"""Seed section "Best Practices 3: Fallback Strategies": substitutes for failed operations.

Run with ``.venv/bin/python examples/seed_fallbacks.py`` (``--quick`` is accepted for the test
suite; the run takes well under a second). Three pipelines put a fallback stage in front of a
local price service that goes down: a fixed value, a callable that sees the error, and the
last successful answer per operation name (``cache_last_success``). Then the seed's own
``with_fallback(primary, fallback, *args)`` helper, sync and async, with its conventions:
a ``{"status": "error"}`` result counts as a failure, the fallback's answer is marked
``used_fallback``, and both failing gives an error dict.
"""

from __future__ import annotations

import argparse
import asyncio

import structlog

from garrison import FallbackConfig, Runtime, awith_fallback, with_fallback


class PriceService:
    def __init__(self) -> None:
        self.up = True

    def price(self, sku: str) -> dict[str, object]:
        if not self.up:
            raise ConnectionError("price service unreachable")
        return {"sku": sku, "price": 10 + len(sku), "status": "success"}


def primary(sku: str) -> dict[str, object]:
    return {"status": "error", "error": f"no price for {sku} in the live feed"}


def from_catalogue(sku: str) -> dict[str, object]:
    return {"sku": sku, "price": 9.99, "status": "success", "source": "catalogue"}


def broken(sku: str) -> dict[str, object]:
    raise LookupError(f"catalogue has no {sku}")


async def aprimary(sku: str) -> dict[str, object]:
    await asyncio.sleep(0.01)
    raise TimeoutError(f"live feed timed out for {sku}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for the test suite")
    parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    service = PriceService()
    with Runtime(name="fallbacks") as rt:
        pipelines = {
            "value": rt.pipeline("by_value", fallback={"price": None, "status": "unavailable"}),
            "callable": rt.pipeline(
                "by_callable",
                fallback=lambda error, message: {
                    "sku": message.args[0],
                    "price": None,
                    "reason": f"{type(error).__name__}: {error}",
                },
            ),
            "cache_last_success": rt.pipeline(
                "by_cache", fallback=FallbackConfig(cache_last_success=True)
            ),
        }
        for up in (True, False):
            service.up = up
            print(f"price service {'up' if up else 'DOWN'}:")
            for mode, pipeline in pipelines.items():
                answer = pipeline.options(name="price:apple").call(service.price, "apple")
                print(f"  {mode:<18} -> {answer}")
        cache = pipelines["cache_last_success"]
        try:
            cache.options(name="price:kiwi").call(service.price, "kiwi")
        except ConnectionError as error:
            print(f"  cache_last_success, never-seen name price:kiwi -> re-raised: {error!r}")
        for mode, pipeline in pipelines.items():
            print(
                f"  {mode} stage: fallbacks used by source {pipeline.status()['fallback']['used']}"
            )

    print("with_fallback, the seed's helper:")
    print("  primary succeeds:", with_fallback(from_catalogue, primary, "pear"))
    print("  primary says error:", with_fallback(primary, from_catalogue, "pear"))
    print("  both fail:", with_fallback(primary, broken, "pear"))
    print("  async primary raises:", asyncio.run(awith_fallback(aprimary, from_catalogue, "fig")))


if __name__ == "__main__":
    main()
