"""Sub-commands of the ``drivecap`` CLI, one module each (see :mod:`drivecap.cli`)."""
