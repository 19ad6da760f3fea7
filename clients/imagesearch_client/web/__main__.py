from imagesearch_client.web.app import main

main()
