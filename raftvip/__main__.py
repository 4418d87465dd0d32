from raftvip.cli import main

main()
