"""Everything that is not an actor: events, codec, store, state, recommenders, config, gateway."""
