import sys

from fastwds.cli import main

sys.exit(main())
