import sys

from nansearch.cli import main

sys.exit(main())
