from services.web.server import main

main()
