"""Helpers the tests import (``from helpers.x import y``) and scripts they run as subprocesses."""
