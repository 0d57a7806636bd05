"""Local emulators of the services rotator talks to, for the demo and the tests.

Not a production service: state lives in memory (optionally a JSON snapshot in a state dir),
signing keys are generated on first start, and every identity is seeded.
"""
