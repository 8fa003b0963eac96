"""Emulators of the two services the bot talks to, served on 127.0.0.1 for tests and
benchmarks, so that no test touches Discord or 1min.ai.

* :mod:`tests.emulators.discord`: Discord's gateway, REST API and CDN for the real
  discord.py client; what it must satisfy, and why, is in ``docs/discord-emulation.md``.
* :mod:`tests.emulators.onemin`: 1min.ai's asset and ``IMAGE_UPSCALER`` API, strict about
  the contract in ``docs/onemin-api.md``.
"""
