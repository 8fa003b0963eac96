import asyncio, time, shutil
from pathlib import Path
from bench.common import onemin_in_subprocess
from tests.fleet_harness import all_final, delivered, fleet
from tests.harness import ONEMIN_KEY

async def main():
    tmp = Path("/tmp/fleetdbg"); shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir()
    with onemin_in_subprocess(ONEMIN_KEY, 1.0) as base:
        async with fleet(tmp) as f:
            await f.start(MAX_CONCURRENT_JOBS="4", ONEMIN_API_BASE=base, LOG_LEVEL="INFO")
            start = time.perf_counter()
            its = await f.burst(12)
            try:
                finals = await all_final(its, timeout=60)
                print("elapsed", time.perf_counter() - start, "delivered", delivered(finals))
            except Exception as e:
                print("FAILED", type(e))
                for p in tmp.glob("bot*.log"):
                    shutil.copy(p, "/tmp/" + p.name)
                rows = await f.db.fetchall("SELECT status, stage, lease_owner, count(*) FROM jobs GROUP BY 1,2,3")
                print([tuple(r) for r in rows])
if __name__ == "__main__":
    asyncio.run(main())
