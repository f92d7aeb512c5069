import sys

from crispedit.cli import main

sys.exit(main())
