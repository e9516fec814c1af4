import sys

from senet_viz.cli import main

sys.exit(main())
