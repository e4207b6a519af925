"""The streaming core: the provider stream, the relay that drives it through the guard and the
coalescer to a sink, and the types, errors, history and metrics they share."""
