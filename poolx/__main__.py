import sys

from poolx.cli import main

sys.exit(main())
