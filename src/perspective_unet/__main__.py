import sys

from perspective_unet.cli import main

sys.exit(main())
