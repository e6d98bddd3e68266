"""Word lists behind the procedural probe families (:mod:`distill.probes.families`).

Hand lists: unambiguous single answers, no accented spellings (answers are compared after lower-casing
only), and no gold inside its own question (an echo of the question must not score). Moved here from
``bench/distill_context.py`` so the benchmark and the product draw the same items.
"""

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("the United Kingdom", "London"), ("Egypt", "Cairo"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
    ("Poland", "Warsaw"), ("Hungary", "Budapest"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"),
    ("the Czech Republic", "Prague"), ("Turkey", "Ankara"), ("India", "New Delhi"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Indonesia", "Jakarta"), ("the Philippines", "Manila"),
    ("Australia", "Canberra"), ("Canada", "Ottawa"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"),
    ("Peru", "Lima"), ("Venezuela", "Caracas"), ("Cuba", "Havana"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"),
    ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"), ("Pakistan", "Islamabad"), ("Afghanistan", "Kabul"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Lebanon", "Beirut"),
    ("Syria", "Damascus"), ("Jordan", "Amman"), ("Nepal", "Kathmandu"), ("Malaysia", "Kuala Lumpur"),
    ("New Zealand", "Wellington"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"),
]
PLURALS = [
    ("child", "children"), ("mouse", "mice"), ("man", "men"), ("woman", "women"), ("foot", "feet"),
    ("tooth", "teeth"), ("goose", "geese"), ("person", "people"), ("leaf", "leaves"), ("knife", "knives"),
    ("wife", "wives"), ("wolf", "wolves"), ("life", "lives"), ("half", "halves"), ("shelf", "shelves"),
    ("loaf", "loaves"), ("calf", "calves"), ("thief", "thieves"), ("potato", "potatoes"), ("tomato", "tomatoes"),
    ("hero", "heroes"), ("cactus", "cacti"), ("fungus", "fungi"), ("crisis", "crises"), ("ox", "oxen"),
    ("box", "boxes"), ("city", "cities"), ("baby", "babies"), ("party", "parties"), ("lady", "ladies"),
    ("story", "stories"), ("church", "churches"), ("bus", "buses"), ("fox", "foxes"), ("dish", "dishes"),
    ("glass", "glasses"), ("country", "countries"), ("family", "families"), ("watch", "watches"),
    ("brush", "brushes"), ("bench", "benches"), ("dress", "dresses"), ("cherry", "cherries"), ("puppy", "puppies"),
    ("berry", "berries"), ("army", "armies"), ("body", "bodies"), ("library", "libraries"), ("class", "classes"),
    ("match", "matches"), ("beach", "beaches"), ("wish", "wishes"), ("kiss", "kisses"), ("echo", "echoes"),
]
REVIEW_SUBJECTS = ["The movie", "This restaurant", "The new phone", "Our hotel room", "The concert", "This book",
                   "The coffee here", "The service", "This laptop", "The museum tour", "The pizza", "This game"]
POSITIVE = ["was absolutely wonderful and I loved every minute of it", "exceeded all my expectations",
            "was the best I have ever had", "made me so happy that I will come back again",
            "was brilliant, delightful and worth every penny", "was fantastic and I recommend it to everyone",
            "was amazing from start to finish", "was a real joy and a great pleasure"]
NEGATIVE = ["was a complete waste of money", "was awful and I hated every minute of it",
            "was the worst I have ever had", "made me so angry that I will never come back",
            "was terrible, boring and overpriced", "was a horrible disappointment",
            "was broken, dirty and disgusting", "was painfully bad and a total failure"]

ANIMALS = ["tiger", "horse", "rabbit", "eagle", "shark", "elephant", "frog", "wolf", "camel", "dolphin", "monkey",
           "snake", "owl", "giraffe", "zebra", "penguin", "bear", "fox", "deer", "goat", "parrot", "whale", "lion",
           "mouse", "duck", "turtle", "kangaroo", "squirrel", "bee", "cow"]
PLANTS = ["rose", "oak", "tulip", "cactus", "fern", "pine", "daisy", "bamboo", "maple", "sunflower", "lily", "moss",
          "ivy", "willow", "orchid", "clover", "palm", "birch", "lavender", "dandelion", "cedar", "violet", "basil",
          "mint", "poppy", "grass", "seaweed", "lotus", "thistle"]
CONTINENTS = [("France", "Europe"), ("Germany", "Europe"), ("Italy", "Europe"), ("Spain", "Europe"), ("Poland", "Europe"),
              ("Sweden", "Europe"), ("Greece", "Europe"), ("Norway", "Europe"), ("Portugal", "Europe"), ("Austria", "Europe"),
              ("Japan", "Asia"), ("China", "Asia"), ("India", "Asia"), ("Thailand", "Asia"), ("Vietnam", "Asia"),
              ("Nepal", "Asia"), ("Mongolia", "Asia"), ("Pakistan", "Asia"), ("Malaysia", "Asia"), ("Indonesia", "Asia"),
              ("Kenya", "Africa"), ("Nigeria", "Africa"), ("Egypt", "Africa"), ("Ghana", "Africa"), ("Ethiopia", "Africa"),
              ("Morocco", "Africa"), ("Uganda", "Africa"), ("Senegal", "Africa"), ("Zambia", "Africa"), ("Tanzania", "Africa"),
              ("Brazil", "South America"), ("Argentina", "South America"), ("Chile", "South America"),
              ("Peru", "South America"), ("Colombia", "South America"), ("Bolivia", "South America"),
              ("Uruguay", "South America"), ("Ecuador", "South America"), ("Paraguay", "South America"),
              ("Venezuela", "South America"), ("Finland", "Europe"), ("Denmark", "Europe"), ("Ireland", "Europe"),
              ("Cambodia", "Asia"), ("Laos", "Asia"), ("Mali", "Africa"), ("Angola", "Africa"),
              ("Suriname", "South America"), ("Guyana", "South America"), ("Hungary", "Europe")]

BIG_ANIMALS = ["elephant", "whale", "giraffe", "horse", "bear", "camel", "rhino", "hippo", "moose", "buffalo",
               "gorilla", "shark", "cow", "bison", "walrus", "ox", "yak", "elk", "orca", "lion"]
SMALL_ANIMALS = ["ant", "mouse", "bee", "fly", "spider", "ladybug", "snail", "frog", "hamster", "sparrow",
                 "worm", "beetle", "mosquito", "flea", "gnat", "moth", "cricket", "lizard", "shrimp", "wasp"]
HOT_THINGS = ["fire", "sun", "lava", "oven", "desert", "stove", "flame", "soup", "tea", "summer", "volcano",
              "coffee", "toaster", "furnace", "candle", "sauna", "grill", "kettle", "radiator", "heater"]
COLD_THINGS = ["ice", "snow", "glacier", "freezer", "winter", "frost", "iceberg", "fridge", "hail", "igloo",
               "popsicle", "sleet", "blizzard", "icicle", "snowman", "tundra", "arctic", "antarctica", "slush", "polar bear"]
FRUITS = ["apple", "banana", "cherry", "grape", "mango", "peach", "pear", "plum", "lemon", "orange", "kiwi",
          "melon", "apricot", "papaya", "lime", "fig", "coconut", "pineapple", "raspberry", "strawberry"]
VEHICLES = ["car", "bus", "truck", "train", "bicycle", "tractor", "van", "taxi", "scooter", "tram", "boat",
            "ship", "plane", "helicopter", "motorcycle", "subway", "ferry", "jeep", "wagon", "canoe"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
NAMES = ["Tom", "Anna", "Ben", "Sara", "Leo", "Mia", "Sam", "Lily", "Max", "Emma", "Jack", "Zoe"]
OBJECTS = ["apples", "books", "pens", "marbles", "stickers", "cookies", "cards", "shells", "coins", "stamps"]
