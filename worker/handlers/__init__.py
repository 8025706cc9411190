"""Handlers shipped with the fleet (the conversation engine plugs in through worker/handler.py)."""
