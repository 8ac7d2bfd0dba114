import sys

from tilepipe.cli import main

sys.exit(main())
