"""Installs the loopback-only network guard into every Python subprocess of the test suite."""

import os
import sys

if os.environ.get("ASSIST_NETGUARD_LOG"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import netguard

        netguard.install()
    finally:
        sys.path.pop(0)
