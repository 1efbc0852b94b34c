"""rayft_core: the engine of one worker process (config, data transforms, models, losses, the loop).

It never imports ``ray`` or ``rayft``; ``tests/test_layering.py`` checks that contract.
"""

__version__ = "0.1.0"
