import sys

from imcflow.cli import main

sys.exit(main())
