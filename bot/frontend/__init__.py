"""The Discord front end's glue that ``cogs/`` use.

The client, the command tree and its error handler, replies, the translator, and the
fleet's IDENTIFY turns. Only this package and ``cogs/`` import discord.py.
"""
