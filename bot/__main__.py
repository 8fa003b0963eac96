"""``python -m bot``: see :mod:`bot.app.cli`."""

from bot.app.cli import run

if __name__ == "__main__":
    run()
