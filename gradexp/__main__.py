import sys

from gradexp.cli.main import main

sys.exit(main())
