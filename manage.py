#!/usr/bin/env python3
"""The NOFX command line from a checkout: ``python manage.py ...`` is ``nofx ...``."""

from nofx.cli import main

if __name__ == "__main__":
    main()
