"""``python -m safe_qaq.toy measure|report``: see :mod:`safe_qaq.toy.measure`."""

import sys

from safe_qaq.toy.measure import main

sys.exit(main())
