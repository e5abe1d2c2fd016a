import sys

from gradexp.cli import main

sys.exit(main())
