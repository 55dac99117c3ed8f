import sys

from safe_qaq.prepare.cli import main

sys.exit(main())
