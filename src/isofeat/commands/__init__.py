"""The verbs: one module per verb group, each with ``register(sub)``.

``isofeat.cli`` imports them by name (``COMMAND_MODULES``). A verb module turns parsed
arguments into a call of the library below it (``isofeat.init``, ``isofeat.tasks``, ...) and
raises :class:`isofeat.errors.IsofeatError` for ``cli.main`` to print; no library module
imports a verb module (tests/unit/test_imports.py).
"""
