"""The actors: per-user interest actors, the catalog actor, the inference actor and their runtime."""
