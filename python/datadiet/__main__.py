import sys

from datadiet.cli import main

sys.exit(main())
