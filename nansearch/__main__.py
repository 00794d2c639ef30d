import sys

from nansearch.cli.main import main

sys.exit(main())
