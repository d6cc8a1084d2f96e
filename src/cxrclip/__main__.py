import sys

from cxrclip.cli import main

sys.exit(main())
