"""Measured speed-ups that reach into other libraries' internals. Each checks that what it
changes is what it expects and steps aside (logging why) otherwise."""
