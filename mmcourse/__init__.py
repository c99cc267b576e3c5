"""mmcourse: the small, tested helper package behind the mmcourse book.

Modules are named by concept (``attention``, ``train``, ``results`` ...); import what a chapter needs.
"""

__version__ = "0.1.0"
